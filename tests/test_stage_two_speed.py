"""What a ``--set`` sweep of a Keras head does once rather than per run."""

from __future__ import annotations

import json

from classifiers import keras_head
from pipeline.cli import main


def counting(monkeypatch, owner: object, name: str) -> list:
    """Replace ``owner.name`` with a wrapper that notes each call; the list of calls fills as it runs."""
    calls: list = []
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_a_sweep_standardises_its_features_once_with_the_same_statistics(digits_cache, tmp_path, monkeypatch):
    calls = counting(monkeypatch, keras_head, "channel_stats")
    argv = ["train", str(digits_cache), "--head", "gap", "--runs-dir", str(tmp_path), "--set", "verbose=0"]
    assert main([*argv, "--set", "epochs=1,2", "--name", "sweep"]) == 0
    assert len(calls) == 1
    assert main([*argv, "--set", "epochs=2", "--name", "alone"]) == 0
    swept, alone = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("sweep-epochs=2", "alone"))
    assert swept == alone


def test_a_sweep_reads_the_cache_records_as_often_as_one_run(digits_cache, tmp_path, monkeypatch):
    from features_cache.reader import FeatureCache

    calls = counting(monkeypatch, FeatureCache, "records")
    argv = ["train", str(digits_cache), "--head", "logreg", "--runs-dir", str(tmp_path)]
    assert main([*argv, "--set", "C=0.5", "--name", "alone"]) == 0
    one_run = len(calls)
    calls.clear()
    assert main([*argv, "--set", "C=0.1,0.5,2", "--name", "sweep"]) == 0
    assert len(calls) == one_run
    swept, alone = (json.loads((tmp_path / name / "config.json").read_text()) for name in ("sweep-C=0.5", "alone"))
    assert swept["train_content"] == alone["train_content"] and len(alone["train_content"]) > 0
