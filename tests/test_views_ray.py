"""``extract --engine ray`` makes the same layer and view caches as one machine."""

from __future__ import annotations

import pytest
from test_extract import assert_same_cache, options, snapshot

from features_cache.reader import FeatureCache
from pipeline.demo_data import write_digits
from pipeline.extraction.extract import run_extract

ray = pytest.importorskip("ray", reason="Ray is not installed here; `make setup-distributed` adds it")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_a_view_of_a_layer_on_ray_equals_the_single_machine_one(tmp_path, weights_file):
    data = write_digits(tmp_path / "digits", per_class=3)
    made = {}
    for engine in ("local", "ray"):
        cache = tmp_path / engine / "flip.h5"
        cache.parent.mkdir()
        extra = {"engine": "ray", "workers": 2} if engine == "ray" else {}
        report = run_extract(options(data, cache, weights_file, image_size=64, layer="block4_pool", view="crop1", **extra))
        assert report.extracted == 30
        made[engine] = snapshot(cache)
        with FeatureCache(cache) as opened:
            assert opened.feature_shape == (4, 4, 512) and opened.recipe.view.startswith("crop1(")
    assert_same_cache(made["ray"], made["local"])
