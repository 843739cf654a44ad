"""``pipeline export RUN OUT.keras``: backbone and head as one model from raw uint8 images to probabilities."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write one .keras model: raw uint8 images in (any size), class probabilities out",
        description="Join the run's frozen backbone (resizing and preprocessing included) and its head into one "
        "Keras model file. Load it with `import pipeline.serving.export; keras.saving.load_model(OUT)`.",
    )
    parser.add_argument("run_ref", metavar="RUN", help="a run folder, or a run's name under --runs-dir")
    parser.add_argument("out", help="the .keras file to write")
    parser.add_argument("--runs-dir", default="runs", help="where named runs live (default runs)")
    parser.add_argument(
        "--weights", default=None,
        help="backbone weights: imagenet, a .h5 path or random(seed=N); default: what the run's cache was made with",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.errors import check_output_file
    from pipeline.serving.export import export
    from pipeline.serving.predict import load_run_model

    check_output_file(args.out, "OUT")
    model = load_run_model(args.run_ref, args.runs_dir, args.weights)
    out = export(model, args.out)
    print(f"{out}: {model.recipe.backbone} and the {type(model.head).name} head of {model.run_dir.name}, "
          f"uint8 images in, {len(model.class_names)} class probabilities out")
    if model.recipe.decoder != "pillow":
        print(f"note: the run's features were decoded by {model.recipe.decoder}; the model and its helpers "
              "(serving_image, predict_encoded) decode with Pillow, so probabilities may differ slightly from the run's")
    return 0
