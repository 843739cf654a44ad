"""``make bench ENGINE=ray``: what Ray costs and gives against the single-machine ``extract``.

On the same photo-like JPEGs, each ``pipeline extract`` runs as its own whole process
(Ray's start-up included, as a user pays it): the single-machine engine, then Ray with
1 and 2 model workers, at a small N where start-up dominates and a larger one.

    python -m bench.ray_cluster --n 64 512 --size 224 --out bench-out
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.throughput import dataset, device, fresh, run_process
from pipeline.quiet import quiet_start

RUNS = (("local", None), ("ray", 1), ("ray", 2))


def measure(n: int, size: int, batch: int, out: Path) -> list[dict]:
    """Each engine on ``n`` images; rate from the whole process's wall time."""
    data = dataset(out, n)
    rows = []
    for engine, workers in RUNS:
        cache = out / f"ray-bench-{engine}-{workers}-{n}.h5"
        fresh(cache)
        argv = [
            sys.executable, "-m", "pipeline", "extract", str(data), "--cache", str(cache), "--weights", "none",
            "--image-size", str(size), "--batch-size", str(batch), "--engine", engine,
        ]
        if workers:
            argv += ["--workers", str(workers)]
        process = run_process(argv, out / "logs" / f"ray-bench-{engine}-{workers}-{n}.log")
        rows.append({"n": n, "engine": engine, "workers": workers, "wall_seconds": process.wall,
                     "images_per_second": n / process.wall, "peak_rss_mib": process.peak_rss_mib})
        fresh(cache)
    local = rows[0]["images_per_second"]
    for row in rows:
        row["vs_local"] = row["images_per_second"] / local
    return rows


def report(rows: list[dict], size: int, batch: int) -> None:
    from rich.console import Console
    from rich.table import Table

    facts = device()
    table = Table(title=f"{facts['name']} ({facts['cores']} cores), {size} px, batch {batch}: whole processes", show_edge=False)
    for column in ("N", "engine", "workers", "wall s", "img/s", "vs local", "driver peak RSS MiB"):
        table.add_column(column, justify="left" if column == "engine" else "right")
    for row in rows:
        table.add_row(str(row["n"]), row["engine"], str(row["workers"] or "-"), f"{row['wall_seconds']:.1f}",
                      f"{row['images_per_second']:.1f}", f"{row['vs_local']:.2f}x", f"{row['peak_rss_mib']:.0f}")
    Console(highlight=False).print(table)


def main(argv: list[str] | None = None) -> int:
    quiet_start()
    parser = argparse.ArgumentParser(prog="python -m bench.ray_cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[64, 512], help="image counts (default 64 512)")
    parser.add_argument("--size", type=int, default=224, help="input size (default 224)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--out", default="bench-out", help="folder for data, caches, logs and ray-bench.json")
    args = parser.parse_args(argv)
    from pipeline.extraction.ray_engine import import_ray

    import_ray()  # the one-line install hint before generating any data
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = [row for n in args.n for row in measure(n, args.size, args.batch, out)]
    report(rows, args.size, args.batch)
    results = {"device": device(), "size": args.size, "batch": args.batch, "runs": rows,
               "total_seconds": time.perf_counter() - started}
    (out / "ray-bench.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{out / 'ray-bench.json'} written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
