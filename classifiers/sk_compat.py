"""The one place the heads touch scikit-learn's private parameter validation.

``sklearn.utils._param_validation`` is what gives ``--set units=0`` scikit-learn's own one-line
message, and what every scikit-learn estimator uses; it is private, so the heads import it only
from here, ``pyproject.toml`` pins scikit-learn to the minor versions it was tested with, and
``tests/test_sklearn_compat.py`` checks each name used below on the installed version.
"""

from __future__ import annotations

from sklearn.utils._param_validation import HasMethods, Interval, InvalidParameterError, StrOptions

__all__ = ["HasMethods", "Interval", "InvalidParameterError", "StrOptions"]
