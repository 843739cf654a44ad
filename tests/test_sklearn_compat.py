"""Heads are scikit-learn classifiers: its own estimator checks, and the tools people use them with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import parametrize_with_checks

from classifiers import HEADS, EstimatorHead, SettingError
from features_cache.reader import FeatureCache
from pipeline.training.train import class_labels

# check_supervised_y_no_nan feeds y full of inf; casting it on the way to its expected error warns.
# check_array_api_input skips itself: the heads take numpy arrays (Keras converts them), not other array libraries.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")

# Settings under which each head learns scikit-learn's small check datasets (blobs of 2-3 classes, 20-150 rows).
# XLA off: the checks fit a few hundred tiny models, where compiling each costs several times its training;
# the heads' default (XLA on with TensorFlow) is what test_heads.py and the CLI tests train with.
CHECK_SETTINGS = {
    "dense": {"epochs": 5, "units": 16, "learning_rate": 1e-2, "verbose": 0, "jit_compile": False},
    "gap": {"epochs": 10, "learning_rate": 1e-1, "verbose": 0, "jit_compile": False},
    "logreg": {},
    "finetune": {"head_epochs": 5, "epochs": 1, "units": 16, "learning_rate": 1e-2, "verbose": 0, "jit_compile": False},
}


@parametrize_with_checks(
    [HEADS[name](**CHECK_SETTINGS[name]) for name in sorted(HEADS)] + [EstimatorHead(estimator=LogisticRegression())]
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def features(digits_cache: Path) -> tuple[np.ndarray, np.ndarray]:
    with FeatureCache(digits_cache) as cache:
        rows = np.arange(len(cache))
        return cache.features(rows), class_labels(cache, rows)


FAST = {"dense": {"epochs": 4, "verbose": 0, "jit_compile": False}, "gap": {"epochs": 6, "verbose": 0, "jit_compile": False},
        "logreg": {}, "finetune": {"head_epochs": 4, "epochs": 1, "verbose": 0, "jit_compile": False}}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_clone_and_cross_val_predict(name, features):
    X, y = features
    head = HEADS[name](**FAST[name])
    copy = clone(head)
    assert copy.get_params() == head.get_params() and copy is not head
    folds = StratifiedKFold(3, shuffle=True, random_state=0)
    proba = cross_val_predict(head, X, y, cv=folds, method="predict_proba")
    assert proba.shape == (len(X), 10)
    assert np.mean(np.unique(y)[proba.argmax(axis=1)] == y) > 0.6  # chance is 0.1
    assert not hasattr(head, "classes_")  # cross_val_predict fits clones


@pytest.mark.parametrize("name, grid", [("dense", {"units": [8, 32]}), ("gap", {"learning_rate": [1e-3, 1e-2]}), ("logreg", {"C": [0.01, 1.0]})])
def test_grid_search(name, grid, features):
    X, y = features
    search = GridSearchCV(HEADS[name](**FAST[name]), grid, cv=2).fit(X, y)
    assert set(search.best_params_) == set(grid)
    assert search.best_estimator_.predict(X[:5]).dtype.kind == "U"  # class names come back


@pytest.mark.parametrize("name", sorted(HEADS))
def test_calibration_and_pipeline(name, features):
    X, y = features
    calibrated = CalibratedClassifierCV(HEADS[name](**FAST[name]), cv=2).fit(X, y)
    np.testing.assert_allclose(calibrated.predict_proba(X[:10]).sum(axis=1), 1, atol=1e-6)
    pooled = make_pipeline(FunctionTransformer(lambda maps: maps.mean(axis=(1, 2))), HEADS[name](**FAST[name]))
    pooled.fit(X, y)
    assert pooled.score(X, y) > 0.6


def test_estimator_head_takes_nested_settings_like_any_meta_estimator(features):
    X, y = features
    head = EstimatorHead(estimator=LogisticRegression(max_iter=200)).set_params(estimator__C=0.5)
    assert head.estimator.C == 0.5 and head.get_params()["estimator__C"] == 0.5
    search = GridSearchCV(EstimatorHead(estimator=LogisticRegression(max_iter=200)), {"estimator__C": [0.1, 1.0]}, cv=2)
    search.fit(X, y)
    assert set(search.best_params_) == {"estimator__C"}
    with pytest.raises(SettingError, match="head 'sklearn' has no setting units; its settings are estimator, pooling"):
        head.set_params(units=3)


def test_the_private_validation_the_heads_use_is_there_and_behaves():
    """What classifiers/sk_compat.py takes from sklearn.utils._param_validation, on the installed version."""
    from numbers import Integral

    from classifiers import sk_compat
    from classifiers.dense import DenseHead

    assert issubclass(sk_compat.InvalidParameterError, ValueError)
    assert sk_compat.StrOptions({"avg"}).is_satisfied_by("avg") and not sk_compat.StrOptions({"avg"}).is_satisfied_by("x")
    assert sk_compat.Interval(Integral, 1, None, closed="left").is_satisfied_by(3)
    assert sk_compat.HasMethods(["fit"]).is_satisfied_by(LogisticRegression())
    with pytest.raises(SettingError, match=r"The 'units' parameter of DenseHead must be an int in the range \[1, inf\)\. Got 0"):
        DenseHead(units=0).check_params()
