"""The errors a head raises for settings and inputs it cannot use: one line, naming the value and the fix.

They are this package's own, so ``classifiers`` depends on nothing of the command line tool;
the tool shows any :class:`HeadError` as ``error: <message>`` with no traceback.
"""


class HeadError(Exception):
    """A head that cannot do what was asked; the message says why and what to do."""


class SettingError(HeadError, ValueError):
    """An unknown setting or a value a head cannot use; shown as a one-line error."""


class FeatureShapeError(HeadError, ValueError):
    """Features of another shape than the head was trained on."""
