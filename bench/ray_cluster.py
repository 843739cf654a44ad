"""``make bench ENGINE=ray``: what Ray costs against the single-machine ``extract``, and 10 million images on paper.

On the same photo-like JPEGs, each ``pipeline extract`` runs as its own whole process: the
single-machine engine, then Ray on 1, 2 and 3 simulated nodes (``ray.cluster_utils.Cluster``:
a head that only coordinates, and worker nodes of 2 CPUs each, one model worker per node,
``--address`` to join them, as a user joins a real cluster). On one machine the nodes share
its cores, so the rows are what Ray's machinery costs, not what more machines would give.

From the same runs it measures what a projection needs: seconds per image on one worker,
the driver's seconds per image outside the model (planning, commit), its seconds per shard to
accept what workers wrote (and, beside it, to read a shard back whole), and the rows per shard (so the files per million images). The
projection's inputs are printed and stored, so the sum can be redone by hand.

    python -m bench.ray_cluster --n 64 512 --size 224 --nodes 1 2 3 --out bench-out
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.throughput import EXTRACT_TIMING, dataset, device, fresh, run_process
from pipeline.quiet import quiet_start

NODE_CPUS = 2
NODE_OBJECT_STORE = 512 * 2**20
TARGET = 10_000_000
GPU_WORKERS = 8
GPU_IMAGES_PER_SECOND = 2_000  # per GPU, decode-bound, measured on one 16-core H100 host (README)


def _extract(data: Path, cache: Path, size: int, batch: int, log: Path, ray: tuple[str, int] | None) -> dict:
    """One whole ``pipeline extract``; its own report gives the extraction loop's share."""
    argv = [
        sys.executable, "-m", "pipeline", "extract", str(data), "--cache", str(cache), "--weights", "none",
        "--image-size", str(size), "--batch-size", str(batch),
    ]
    if ray:
        argv += ["--engine", "ray", "--address", ray[0], "--workers", str(ray[1])]
    process = run_process(argv, log)
    match = EXTRACT_TIMING.search(process.log.read_text())
    if match is None or not match.group(2):
        raise SystemExit(f"{log}: no timing line in the extract output; see the log")
    seconds, rate, loading = float(match.group(1)), float(match.group(2)), float(match.group(3) or 0)
    return {"wall_seconds": process.wall, "reported_seconds": seconds, "extract_loop_img_s": rate,
            "model_seconds": loading, "peak_rss_mib": process.peak_rss_mib}


def _shard_costs(cache: Path) -> dict:
    """Rows per shard, and what the driver pays to accept each one a worker wrote: the size and id
    check of ``ray_engine._accepted`` (the worker sends the digest and checked every row), beside
    reading it back whole, which is what the driver did before."""
    import h5py

    from features_cache import integrity
    from features_cache.reader import FeatureCache
    from features_cache.shards import file_digest, open_shard, shard_files
    from pipeline.extraction.ray_engine import ShardFacts, _accepted

    with FeatureCache(cache) as opened:
        recipe, rows = opened.recipe, len(opened)
    paths = shard_files(cache)
    facts = []
    for path in paths:
        with h5py.File(path, "r") as f:
            facts.append(ShardFacts(path.stat().st_size, file_digest(path), integrity.stored_id(f), len(f["features"])))
    started = time.perf_counter()
    for path, fact in zip(paths, facts):
        _accepted(path, fact, [], [])
    accepted = (time.perf_counter() - started) / len(paths)
    started = time.perf_counter()
    for path in paths:
        open_shard(path, recipe, read_features=True)
    return {"shards": len(paths), "rows": rows, "verify_seconds_per_shard": accepted,
            "read_back_seconds_per_shard": (time.perf_counter() - started) / len(paths)}


def _cluster(nodes: int):
    """A local multi-node Ray cluster: a CPU-less head and ``nodes`` worker nodes; with its start-up seconds."""
    from ray.cluster_utils import Cluster

    started = time.perf_counter()
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 0, "include_dashboard": False, "object_store_memory": NODE_OBJECT_STORE})
    for _ in range(nodes):
        cluster.add_node(num_cpus=NODE_CPUS, object_store_memory=NODE_OBJECT_STORE)
    cluster.wait_for_nodes()
    return cluster, time.perf_counter() - started


def measure(data: Path, n: int, size: int, batch: int, node_counts: list[int], out: Path) -> list[dict]:
    """The local engine, then Ray on each node count, on the same ``n`` images, one after the other."""
    rows = []
    for nodes in [0, *node_counts]:
        name = f"ray-bench-{nodes}-nodes-{n}" if nodes else f"ray-bench-local-{n}"
        cache, log = out / f"{name}.h5", out / "logs" / f"{name}.log"
        fresh(cache)
        if nodes:
            cluster, cluster_seconds = _cluster(nodes)
            try:
                row = _extract(data, cache, size, batch, log, (cluster.address, nodes))
            finally:
                cluster.shutdown()
            row["cluster_start_seconds"] = cluster_seconds
        else:
            row = _extract(data, cache, size, batch, log, None)
        rows.append({"n": n, "engine": "ray" if nodes else "local", "nodes": nodes, **row, **_shard_costs(cache)})
        fresh(cache)
    local = rows[0]["wall_seconds"]
    for row in rows:
        row["overhead_vs_local"] = row["wall_seconds"] / local
    return rows


def _driver_seconds(row: dict) -> float:
    """The run's own seconds outside building the model and the extraction loop: planning and the commit."""
    return row["reported_seconds"] - row["model_seconds"] - row["n"] / row["extract_loop_img_s"]


def projection(small: dict | None, large: dict) -> dict:
    """10 million images from measured costs of Ray runs on one node.

    T = N*d + max(N*w/W, S*v): the driver plans and commits (d seconds an image, serial), W
    workers extract (w seconds an image each) while the driver verifies the S = N/r shards
    they write (v seconds a shard). With two image counts, w and d are the slopes between
    them, so the start-up both runs pay (the cluster, each worker importing Keras) drops out;
    with one, they are averages that include it.
    """
    loop = large["n"] / large["extract_loop_img_s"]
    if small is None:
        w, d = loop / large["n"], _driver_seconds(large) / large["n"]
    else:
        extra = large["n"] - small["n"]
        w = (loop - small["n"] / small["extract_loop_img_s"]) / extra
        d = (_driver_seconds(large) - _driver_seconds(small)) / extra
    inputs = {
        "N": TARGET,
        "w_worker_seconds_per_image": w,
        "d_driver_seconds_per_image": d,
        "v_driver_verify_seconds_per_shard": large["verify_seconds_per_shard"],
        "reading_each_shard_back_would_take_seconds": large["read_back_seconds_per_shard"],
        "r_rows_per_shard": large["rows"] / large["shards"],
    }
    shards = TARGET / inputs["r_rows_per_shard"]
    driver = TARGET * max(inputs["d_driver_seconds_per_image"], 0.0)
    verify = shards * inputs["v_driver_verify_seconds_per_shard"]
    read_back = shards * inputs["reading_each_shard_back_would_take_seconds"]

    def hours(workers: int, seconds_per_image: float) -> float:
        return (driver + max(TARGET * seconds_per_image / workers, verify)) / 3600

    return {
        "inputs": inputs,
        "from": f"slopes between N={small['n']} and N={large['n']}" if small else f"averages at N={large['n']}",
        "files_per_million": 1e6 / inputs["r_rows_per_shard"],
        "driver_plan_commit_hours": driver / 3600,
        "driver_verify_hours": verify / 3600,
        "driver_read_back_hours": read_back / 3600,
        f"hours_on_{GPU_WORKERS}_nodes_like_this_one": hours(GPU_WORKERS, inputs["w_worker_seconds_per_image"]),
        f"hours_on_{GPU_WORKERS}_gpus_at_{GPU_IMAGES_PER_SECOND}_img_s": hours(GPU_WORKERS, 1 / GPU_IMAGES_PER_SECOND),
    }


def report(rows: list[dict], plan: dict, size: int, batch: int) -> None:
    from rich.console import Console
    from rich.table import Table

    facts = device()
    console = Console(highlight=False)
    table = Table(title=f"{facts['name']} ({facts['cores']} cores), {size} px, batch {batch}: whole processes, one run",
                  show_edge=False)
    for column in ("N", "engine", "nodes", "cluster start s", "wall s", "vs local", "loop img/s", "shards", "driver RSS MiB"):
        table.add_column(column, justify="left" if column == "engine" else "right")
    for row in rows:
        start = f"{row['cluster_start_seconds']:.1f}" if row["nodes"] else "-"
        table.add_row(str(row["n"]), row["engine"], str(row["nodes"] or "-"), start, f"{row['wall_seconds']:.1f}",
                      f"{row['overhead_vs_local']:.2f}x", f"{row['extract_loop_img_s']:.1f}", str(row["shards"]),
                      f"{row['peak_rss_mib']:.0f}")
    console.print(table)
    inputs = plan["inputs"]
    console.print(f"10 million images: T = N*d + max(N*w/W, S*v), S = N/r; inputs from the 1-node runs ({plan['from']}):")
    console.print("  " + ", ".join(f"{key} = {value:.4g}" for key, value in inputs.items()))
    console.print(
        f"  {plan['files_per_million']:,.0f} shard files per million images; driver plan+commit "
        f"{plan['driver_plan_commit_hours']:.2f} h, driver shard checks {plan['driver_verify_hours']:.2f} h "
        f"(reading each shard back, as before: {plan['driver_read_back_hours']:.2f} h); "
        f"{GPU_WORKERS} nodes like this one: {plan[f'hours_on_{GPU_WORKERS}_nodes_like_this_one']:.1f} h; "
        f"{GPU_WORKERS} GPUs at {GPU_IMAGES_PER_SECOND} img/s each: "
        f"{plan[f'hours_on_{GPU_WORKERS}_gpus_at_{GPU_IMAGES_PER_SECOND}_img_s']:.2f} h"
    )


def main(argv: list[str] | None = None) -> int:
    quiet_start()
    parser = argparse.ArgumentParser(prog="python -m bench.ray_cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[512], help="image counts (default 512)")
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3], help="simulated node counts (default 1 2 3)")
    parser.add_argument("--size", type=int, default=224, help="input size (default 224)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--out", default="bench-out", help="folder for data, caches, logs and ray-bench.json")
    args = parser.parse_args(argv)
    from pipeline.extraction.ray_engine import import_ray

    import_ray()  # the one-line install hint before generating any data
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    folders = {n: dataset(out, n) for n in args.n}  # generated on a process pool before any cluster runs
    rows = [row for n in args.n for row in measure(folders[n], n, args.size, args.batch, args.nodes, out)]
    one_node = sorted((row for row in rows if row["nodes"] == min(args.nodes)), key=lambda row: row["n"])
    plan = projection(one_node[0] if len(one_node) > 1 else None, one_node[-1])
    report(rows, plan, args.size, args.batch)
    results = {"device": device(), "size": args.size, "batch": args.batch, "runs": rows, "projection": plan,
               "total_seconds": time.perf_counter() - started}
    (out / "ray-bench.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{out / 'ray-bench.json'} written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
