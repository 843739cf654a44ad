"""``extract --engine ray`` on a local Ray cluster: the same cache as one machine, incremental, resumable.

One local Ray (2 CPUs) serves the module; runs in this process join it. The killed-driver
run is a separate process that starts its own local cluster, as a user's command would. The
lost-node run has a cluster of its own: a head that runs nothing and two worker nodes, one of
which is killed, raylet and workers at once, as a machine that loses power.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import pytest
from image_factory import truncated_jpeg
from test_extract import assert_same_cache, options, snapshot

from features_cache import schema
from pipeline.cli import main
from pipeline.demo_data import write_digits
from pipeline.errors import PipelineError
from pipeline.extraction.extract import run_extract

ray = pytest.importorskip("ray", reason="Ray is not installed here; `make setup-distributed` adds it")

REPO = Path(__file__).resolve().parents[1]
ON_RAY = {"engine": "ray", "workers": 2}


QUIET = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, **QUIET)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """60 digits and two files that are not images, as one machine would skip them."""
    root = write_digits(tmp_path_factory.mktemp("ray") / "digits", per_class=6)
    truncated_jpeg(root / "three" / "truncated.jpg")
    (root / "seven" / "notes.png").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def reference(data, weights_file, tmp_path_factory) -> dict:
    cache = tmp_path_factory.mktemp("single") / "features.h5"
    run_extract(options(data, cache, weights_file))
    return snapshot(cache)


@pytest.mark.parametrize(("write_shards", "compression"), [("workers", "gzip"), ("driver", "none")])
def test_ray_cache_equals_the_single_machine_cache(write_shards, compression, data, reference, weights_file, tmp_path):
    cache = tmp_path / "features.h5"
    report = run_extract(options(data, cache, weights_file, write_shards=write_shards, compression=compression, **ON_RAY))
    assert report.extracted == 60 and {s.path for s in report.skipped} == {"three/truncated.jpg", "seven/notes.png"}
    assert_same_cache(snapshot(cache), reference)
    for shard in schema.shards_dir(cache).glob("shard-*.h5"):  # whoever wrote the shard honoured --compression
        with h5py.File(shard) as f:
            assert f[schema.FEATURES].compression == (None if compression == "none" else compression), shard.name
    assert not list(schema.shards_dir(cache).glob(".*")), "the probe file is removed"
    assert main(["info", str(cache)]) == 0
    assert main(["train", str(cache), "--head", "logreg", "--name", "lr", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert main(["report", str(tmp_path / "runs" / "lr")]) == 0


def test_an_incremental_ray_run_extracts_only_new_images(data, reference, weights_file, tmp_path):
    copy = tmp_path / "digits"
    shutil.copytree(data, copy)
    held_back = [sorted((copy / name).iterdir())[0] for name in ("one", "two")]
    moved = [tmp_path / f"held-{i}.png" for i in range(len(held_back))]
    for source, target in zip(held_back, moved):
        shutil.move(source, target)
    cache = tmp_path / "features.h5"
    assert run_extract(options(copy, cache, weights_file, **ON_RAY)).extracted == 58
    for source, target in zip(moved, held_back):
        shutil.move(source, target)
    report = run_extract(options(copy, cache, weights_file, **ON_RAY))
    assert (report.extracted, report.kept) == (2, 58)
    assert_same_cache(snapshot(cache), reference)


def test_a_killed_driver_resumes_from_the_shards_its_workers_wrote(data, reference, weights_file, tmp_path):
    cache = tmp_path / "features.h5"
    command = [
        sys.executable, "-m", "pipeline", "extract", str(data), "--cache", str(cache), "--weights", str(weights_file),
        "--image-size", "32", "--batch-size", "4", "--precision", "float32", "--storage", "float32",
        "--engine", "ray", "--workers", "2",
    ]
    killed = subprocess.run(command, cwd=REPO, env={**os.environ, "PIPELINE_KILL_AT": "shard-written:3"},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not cache.exists(), "no index was committed"
    kept = len(list(schema.shards_dir(cache).glob("shard-*.h5")))
    assert kept >= 3
    report = run_extract(options(data, cache, weights_file, **ON_RAY))
    assert report.kept >= 3 * 4 - 2 and report.extracted + report.kept == 60
    assert_same_cache(snapshot(cache), reference)


def test_asking_for_more_gpus_than_the_cluster_has_is_refused_not_a_hang(data, weights_file, tmp_path):
    with pytest.raises(PipelineError, match=r"needs 2 GPUs, the Ray cluster has 0"):
        run_extract(options(data, tmp_path / "features.h5", weights_file, gpus_per_worker=1, **ON_RAY))


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1", "no-port"])
def test_an_unreachable_cluster_is_one_line(address, data, tmp_path, capsys):
    assert main(["extract", str(data), "--cache", str(tmp_path / "c.h5"), "--weights", "none", "--image-size", "32",
                 "--engine", "ray", "--address", address]) != 0
    assert capsys.readouterr().err.startswith(f"error: --address {address}: ")


def test_without_ray_the_engine_is_one_line(data, tmp_path):
    hide_ray = (
        "import sys; sys.modules['ray'] = None\n"
        "from pipeline.cli import main\n"
        f"raise SystemExit(main(['extract', {str(data)!r}, '--cache', {str(tmp_path / 'c.h5')!r}, '--engine', 'ray']))\n"
    )
    result = subprocess.run([sys.executable, "-c", hide_ray], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: --engine ray needs Ray: pip install 'cnn-codes-pipeline[distributed]' (or `make setup-distributed`)"
    ]


def test_the_single_machine_path_never_imports_ray(data, weights_file, tmp_path):
    check = (
        "import sys\n"
        "from pipeline.cli import main\n"
        f"assert main(['extract', {str(data)!r}, '--cache', {str(tmp_path / 'c.h5')!r}, '--weights', "
        f"{str(weights_file)!r}, '--image-size', '32']) == 0\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def three_nodes(local_ray):
    """A head that only coordinates and two 2-CPU worker nodes (they share this machine's cores)."""
    from ray.cluster_utils import Cluster

    ray.shutdown()
    small = {"object_store_memory": 100 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, **small})
    workers = [cluster.add_node(num_cpus=2, **small) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()
    ray.init(num_cpus=2, **QUIET)


def _kill_a_model_node_after(shards: int, cache: Path, cluster, workers, killed: list) -> None:
    """Once ``shards`` shards are on disk, kill the worker node that holds a model actor, without warning."""
    folder = schema.shards_dir(cache)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(folder.glob("shard-*.h5"))) < shards:
        time.sleep(0.05)
    # the GCS's actor table (Ray's state API needs the dashboard, which this cluster does not run)
    actors = ray._private.state.actors().values()
    hosts = {a["Address"]["NodeID"] for a in actors if "FeatureActor" in a["ActorClassName"] and a["State"] == "ALIVE"}
    victim = next(node for node in workers if node.node_id in hosts)
    killed.append(len(list(folder.glob("shard-*.h5"))))
    cluster.remove_node(victim, allow_graceful=False)


def test_a_run_that_loses_a_worker_node_finishes_on_the_rest(three_nodes, data, reference, weights_file, tmp_path, capfd):
    cluster, workers = three_nodes
    cache = tmp_path / "features.h5"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_model_node_after, args=(2, cache, cluster, workers, killed), daemon=True)
    killer.start()
    try:
        report = run_extract(options(data, cache, weights_file, **ON_RAY))
    except PipelineError as error:  # the other allowed outcome: one line, then the next run resumes
        assert "\n" not in str(error)
        report = None
    killer.join(timeout=60)
    assert killed and killed[0] < 15, "a node died while shards were still to write (60 images, 4 a shard)"
    assert "Traceback" not in capfd.readouterr().err
    if report is not None:
        assert report.extracted == 60
    again = run_extract(options(data, cache, weights_file, **ON_RAY))
    assert again.extracted + again.kept == 60 and (report is None or again.extracted == 0)
    assert_same_cache(snapshot(cache), reference)
    live = {path.name for path in schema.shards_dir(cache).glob("shard-*.h5")}
    with h5py.File(cache, "r") as index:
        assert live == {Path(name).name for name in index[schema.SHARDS]["files"].asstr()[:]}, "no orphan is left"
