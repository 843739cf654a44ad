"""One set of checks run over every registered head: a new head gets them by joining ``HEADS``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from classifiers import HEADS, FeatureShapeError, SettingError, load_head
from features_cache.reader import FeatureCache
from pipeline.training.splits import plan_cache_splits
from pipeline.training.train import CacheRows, class_labels

# Settings that make each head learn within seconds on 280 tiny random-VGG16 codes.
TEST_SETTINGS = {
    "dense": {"epochs": 10, "verbose": 0}, "gap": {"epochs": 10, "verbose": 0}, "logreg": {},
    "finetune": {"head_epochs": 10, "epochs": 2, "verbose": 0},  # without a top block: the dense head in two phases
}


@pytest.fixture(scope="module")
def digits(digits_cache: Path) -> dict:
    with FeatureCache(digits_cache) as cache:
        plan = plan_cache_splits(cache, (0.7, 0.15, 0.15))
        indices = {split: plan.rows(split) for split in ("train", "val", "test")}
        data = {split: (cache.features(rows), class_labels(cache, rows)) for split, rows in indices.items()}
        data["indices"] = indices
        data["class_names"] = cache.class_names
    return data


@pytest.fixture(scope="module", params=sorted(HEADS))
def fitted(request, digits):
    name = request.param
    X, y = digits["train"]
    head = HEADS[name](**TEST_SETTINGS[name]).fit(X, y, X_val=digits["val"][0], y_val=digits["val"][1])
    return head


def test_every_head_has_test_settings():
    assert set(TEST_SETTINGS) == set(HEADS)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_init_only_stores_settings(name):
    head = HEADS[name]()
    assert head.get_params() == HEADS[name].defaults()
    assert not [key for key in vars(head) if key.endswith("_")]
    assert head.set_params(**TEST_SETTINGS[name]) is head
    assert head.get_params() == {**HEADS[name].defaults(), **TEST_SETTINGS[name]}
    with pytest.raises(SettingError, match="no setting"):
        head.set_params(not_a_setting=1)


def test_head_learns(fitted, digits):
    X, y = digits["test"]
    proba = fitted.predict_proba(X)
    assert proba.shape == (len(X), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-6)
    assert np.mean(fitted.predict(X) == y) > 0.6  # chance is 0.1
    assert list(fitted.classes_) == digits["class_names"]  # class names, not indices
    assert fitted.input_shape_ == (1, 1, 512)
    assert fitted.history_


def test_save_load_gives_same_probabilities(fitted, digits, tmp_path):
    X = digits["test"][0]
    fitted.save(tmp_path)
    loaded = load_head(tmp_path)
    assert type(loaded) is type(fitted)
    assert loaded.get_params() == fitted.get_params()
    np.testing.assert_allclose(loaded.predict_proba(X), fitted.predict_proba(X), atol=1e-6)


def test_to_keras_matches_predict_proba(fitted, digits):
    X = digits["test"][0]
    model = fitted.to_keras()
    np.testing.assert_allclose(np.asarray(model.predict(X, verbose=0)), fitted.predict_proba(X), atol=1e-5)


def test_same_settings_same_model(fitted, digits):
    X, y = digits["train"]
    again = type(fitted)(**fitted.get_params()).fit(X, y, X_val=digits["val"][0], y_val=digits["val"][1])
    np.testing.assert_allclose(again.predict_proba(digits["test"][0]), fitted.predict_proba(digits["test"][0]), atol=1e-6)


def test_streaming_fit_learns(fitted, digits, digits_cache):
    indices = digits["indices"]
    with FeatureCache(digits_cache) as cache:
        head = type(fitted)(**fitted.get_params()).fit_stream(
            CacheRows(cache, indices["train"]), val=CacheRows(cache, indices["val"])
        )
    X, y = digits["test"]
    assert np.mean(head.predict(X) == y) > 0.6


def test_wrong_feature_shape_is_refused(fitted):
    with pytest.raises(FeatureShapeError, match="trained on features of shape"):
        fitted.predict_proba(np.zeros((2, 2, 2, 512), dtype=np.float32))


@pytest.mark.parametrize(
    "name, bad, message",
    [
        ("dense", {"dropout": 1.5}, "The 'dropout' parameter of DenseHead must be a float in the range [0.0, 1.0). Got 1.5 instead."),
        ("dense", {"units": 0}, "The 'units' parameter of DenseHead must be an int in the range [1, inf). Got 0 instead."),
        ("gap", {"optimizer": "lion"}, "The 'optimizer' parameter of GapHead must be a str among"),
        ("logreg", {"pooling": "sum"}, "The 'pooling' parameter of LogRegHead"),
        ("logreg", {"C": float("nan")}, "The 'C' parameter of LogRegHead must be a float in the range (0.0, inf). Got nan"),
        ("gap", {"jit_compile": "yes"}, "The 'jit_compile' parameter of GapHead must be a str among {'auto'} or an instance"),
    ],
)
def test_bad_values_are_refused_with_one_line(name, bad, message):
    with pytest.raises(SettingError) as raised:
        HEADS[name](**bad).check_params()
    assert message in str(raised.value) and "\n" not in str(raised.value)
    X, y = np.ones((4, 3), dtype=np.float32), np.array(["a", "b", "a", "b"])
    with pytest.raises(ValueError, match="parameter of"):
        HEADS[name](**bad).fit(X, y)


def test_logreg_streams_pooled_features_exactly(digits, digits_cache):
    indices = digits["indices"]
    X, y = digits["train"]
    memory = HEADS["logreg"]().fit(X, y)
    with FeatureCache(digits_cache) as cache:
        streamed = HEADS["logreg"]().fit_stream(CacheRows(cache, indices["train"]))
        with pytest.raises(SettingError, match="pooling=avg"):
            HEADS["logreg"](pooling="flatten").fit_stream(CacheRows(cache, indices["train"]))
    np.testing.assert_allclose(streamed.predict_proba(X), memory.predict_proba(X), atol=1e-6)


def test_class_weight_shifts_predictions_toward_weighted_class(digits):
    X, y = digits["train"]
    plain = HEADS["logreg"](C=0.01).fit(X, y)
    weighted = HEADS["logreg"](C=0.01, class_weight={"three": 50.0}).fit(X, y)
    X_test = digits["test"][0]
    assert np.sum(weighted.predict(X_test) == "three") > np.sum(plain.predict(X_test) == "three")


@pytest.mark.parametrize("name", ["dense", "gap"])
def test_a_channel_constant_in_training_does_not_blow_up_at_test_time(name, digits):
    """Variance 0 in training scales that channel by 1 (as StandardScaler does), not by 1/sqrt(1e-7)."""
    X, y = digits["train"]
    X = X.copy()
    X[..., 7] = 0.0  # never active in the training rows
    head = HEADS[name](**TEST_SETTINGS[name]).fit(X, y)
    X_test = digits["test"][0].copy()
    clean = head.predict_proba(np.where(np.arange(X.shape[-1]) == 7, 0.0, X_test))
    X_test[..., 7] = 0.05  # small but non-zero at test time
    np.testing.assert_allclose(head.predict_proba(X_test), clean, atol=0.05)


@pytest.mark.parametrize("name", ["dense", "finetune"])
def test_xla_changes_how_fast_a_head_trains_not_what_it_learns(name, digits):
    """``jit_compile=False`` (scikit-learn's model selection, tiny data) trains the same model as the default's XLA.

    Dropout is off: XLA draws its masks from another random stream, so with dropout the two are equally good, not equal.
    """
    X, y = digits["train"]
    settings = {**TEST_SETTINGS[name], "epochs": 2, "head_epochs": 2} if name == "finetune" else {**TEST_SETTINGS[name], "epochs": 2}
    with_xla, without = (HEADS[name](**settings, dropout=0.0, jit_compile=jit).fit(X, y) for jit in ("auto", False))
    np.testing.assert_allclose(without.predict_proba(digits["test"][0]), with_xla.predict_proba(digits["test"][0]), atol=1e-4)


def test_jit_compile_is_set_from_the_command_line_as_true_or_false():
    from pipeline.training.settings import coerce

    assert coerce(HEADS["dense"], "jit_compile", "false") is False and coerce(HEADS["gap"], "jit_compile", "True") is True
    assert coerce(HEADS["dense"], "jit_compile", "auto") == "auto"
