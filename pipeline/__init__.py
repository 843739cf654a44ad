"""Transfer learning on cached CNN codes: extract once, train many cheap heads.

Importing this package, or any of its modules, changes nothing outside it: the quiet
start-up (TensorFlow's native log lines kept off the terminal) is applied by the command
line entry points only, through :func:`pipeline.quiet.quiet_start`.

Where things are: ``extraction`` turns images into features (stage one), ``training``
turns features into runs (stage two), ``analysis`` turns predictions into pages, and
``serving`` takes a run to new images and to one exported model.
"""

__version__ = "0.1.0"
