"""``make demo``: the embedded default dataset end to end: PNG folders, cache, a head, its errors.

The scikit-learn digits are written as PNG class folders and extracted at 224x224 (7x7x512
codes) with ImageNet weights when they are cached or downloadable. When they are not, the
demo (and only the demo) runs on seeded random weights, and says so first; the cache records
it. By default it takes the first 30 images of each class (300 of 1,797), so the first run
finishes in under two minutes on two CPU cores; ``--per-class all`` adds the rest, and only
the new images are extracted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

from pipeline.cli import main as cli_main
from pipeline.demo_data import write_digits
from pipeline.errors import PipelineError
from pipeline.quiet import quiet_start


def pick_weights() -> str:
    """'imagenet' if Keras can load them here, else 'none' with a plain notice on the first line."""
    from pipeline.extraction.backbones import build_backbone

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # Keras's "Downloading data from ..." line
            build_backbone("vgg16", weights="imagenet", image_size=32, precision="float32")
        return "imagenet"
    except PipelineError as error:
        print(
            "NOTE: this demo runs on SEEDED RANDOM weights, not ImageNet weights, because "
            f"{error}. The cache records weights=random(seed=0).",
            flush=True,
        )
        return "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/digits")
    parser.add_argument("--cache", default="cache/digits.h5")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument(
        "--per-class", default="30", help="digits per class (default 30: 300 images, stratified), or all (1,797)"
    )
    args = parser.parse_args(argv)
    quiet_start()
    per_class = None if args.per_class == "all" else int(args.per_class)
    weights = pick_weights()
    amount = "all 1,797" if per_class is None else f"{per_class} per class of the 1,797"
    print(f"writing {amount} scikit-learn digits as PNG class folders under {args.data}", flush=True)
    write_digits(args.data, per_class=per_class)
    Path(args.cache).parent.mkdir(parents=True, exist_ok=True)
    extract_args = ["extract", args.data, "--cache", args.cache, "--image-size", str(args.image_size)]
    code = cli_main([*extract_args, "--weights", weights])
    if code != 0:
        return code
    cli_main(["info", args.cache])
    from pipeline.training.train import TrainOptions, run_train

    print("training a logistic-regression head on the cached features", flush=True)
    for result in run_train(TrainOptions(cache=args.cache, head="logreg", runs_dir=args.runs_dir)):
        code = cli_main(["report", str(result.folder)]) or code
    code = cli_main(["runs", "--runs-dir", args.runs_dir]) or code
    print(next_steps(args, weights), flush=True)
    return code


def next_steps(args: argparse.Namespace, weights: str = "imagenet") -> str:
    """The commands to type next, for this demo's own cache, data, runs folder and weights, not the defaults."""
    runs = f" RUNS_DIR={args.runs_dir}" if args.runs_dir != "runs" else ""
    given = [f"--{flag} {value}" for flag, value, default in (
        ("data", args.data, "data/digits"), ("cache", args.cache, "cache/digits.h5"), ("runs-dir", args.runs_dir, "runs"),
        ("image-size", args.image_size, 224),
    ) if value != default]
    demo = " ".join(["python -m pipeline.demo", *given, "--per-class all"])
    block4 = str(Path(args.cache).with_name(f"{Path(args.cache).stem}-block4.h5"))
    size = own_size = f" IMAGE_SIZE={args.image_size}" if args.image_size != 224 else ""
    size += f" WEIGHTS={weights}" if weights != "imagenet" else ""
    return f"""
next:
  make extract DATA=path/to/photos CACHE=cache/photos.h5{own_size}   # your own photos: a folder per class, or train/ + validation/ of them
  make train-head CACHE=cache/photos.h5{runs} HEAD=logreg && make report{runs}   # offline, add WEIGHTS=path/to/vgg16.weights.h5 above
  make train-head CACHE={args.cache}{runs} HEAD=dense   # the bottleneck-features recipe (Flatten, Dense 256, Dropout)
  make train-head CACHE={args.cache}{runs} HEAD=logreg SET="C=0.1,1,10"   # three runs from features read once
  make report{runs}   # what the latest run gets wrong (errors.csv, report.html)
  make runs{runs}   # every run, best first
  make extract DATA={args.data} CACHE={block4}{size} EXTRACT_FLAGS="--layer block4_pool --views flip --views-of train"   # block4 maps, flipped training images, once
  make train-head CACHE={block4}{runs} HEAD=finetune TRAIN_FLAGS="--views flip"   # fine-tune VGG16's block5 on them
  {demo}   # all 1,797 digits; only the new ones are extracted"""


if __name__ == "__main__":
    sys.exit(main())
