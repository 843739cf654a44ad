"""New images through the run's backbone and head, exactly as the cache's recipe made features.

The backbone is rebuilt from the recipe stored with the run (backbone, image size,
precision, storage dtype, resize, interpolation) and its weights are checked against
the recipe's hash, so a head never scores features from another extractor. Decoding
uses stage one's loader with the recipe's resize and interpolation (parallel, bounded, bad
files reported rather than fatal), and the recipe's decoder: a run whose features the GPU
decoded is scored with the GPU decoder where it runs, and with Pillow and a one-line note
where it does not (its pixels differ slightly from the GPU's).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import numpy as np

from features_cache.records import SkippedFile
from features_cache.schema import PILLOW, Recipe
from pipeline.errors import PipelineError
from pipeline.extraction.backbone_specs import weights_arguments
from pipeline.extraction.backbones import Backbone, build_backbone
from pipeline.extraction.images import DEFAULT_MAX_PIXELS, ResizeSpec
from pipeline.extraction.loader import DecodedBatch, LoadTask, iter_batches
from pipeline.extraction.sources import candidate_files
from pipeline.training.runs import CONTENT_KEY_DIGITS, TRAIN_CONTENT, load_run_config, resolve_run, write_predictions
from pipeline.training.top import TOP_KEY, FrozenTop


@dataclasses.dataclass
class RunModel:
    """What scoring new images needs: the run's folder, classes, recipe, backbone and head."""

    run_dir: Path
    class_names: list[str]
    recipe: Recipe
    backbone: Backbone
    head: object
    trained_content: frozenset[str] = frozenset()  # content keys of the run's training images
    top: FrozenTop | None = None  # the top block the run applied frozen, in float32, to its cache's maps

    def features(self, images: np.ndarray) -> np.ndarray:
        """What the head takes: the cache's features of ``images`` (storage dtype), through the frozen top if any."""
        features = self.backbone.features(images)
        return features if self.top is None else self.top(features)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Probabilities over every class of the run (columns of classes the head never saw are 0)."""
        return self.head.class_probabilities(features.astype(np.float32), self.class_names)


@dataclasses.dataclass
class PredictResult:
    out: Path
    class_names: list[str]
    paths: list[str]
    probabilities: np.ndarray
    skipped: list[SkippedFile]
    seconds: float
    seen: list[bool] = dataclasses.field(default_factory=list)  # per path: the run trained on this content
    notes: list[str] = dataclasses.field(default_factory=list)  # one line each, e.g. another decoder than the run's


def run_recipe(run_dir: Path, config: dict) -> Recipe:
    stored = config.get("cache", {}).get("recipe") or {}
    try:
        return Recipe(**{
            field.name: stored[field.name] for field in dataclasses.fields(Recipe)
            if field.name in stored or field.default is dataclasses.MISSING
        })
    except KeyError as missing:
        raise PipelineError(
            f"{run_dir / 'config.json'}: the cache recipe has no {missing}; train the run again with `python -m pipeline train`"
        ) from None


def rebuild_backbone(run_dir: Path, recipe: Recipe, weights: str | None = None, layer: str | None = None) -> Backbone:
    """The backbone the run's cache was made with (up to ``layer``, the recipe's by default); refuses weights with another hash."""
    name, seed = weights_arguments(weights or recipe.weights)
    backbone = build_backbone(
        recipe.backbone,
        weights=name,
        image_size=recipe.image_size,
        precision=recipe.precision,
        storage_dtype=recipe.storage_dtype,
        seed=seed,
        layer=layer or recipe.layer,
    )
    if backbone.weights_sha256 != recipe.weights_sha256:
        raise PipelineError(
            f"{run_dir}: the run's features were made with other weights than {backbone.weights} "
            f"(sha256 {recipe.weights_sha256[:12]}, these are {backbone.weights_sha256[:12]}); "
            f"pass --weights with the {recipe.backbone} weights the cache was extracted with ({recipe.weights})"
        )
    return backbone


def load_run_model(run: str, runs_dir: str | Path = "runs", weights: str | None = None) -> RunModel:
    from classifiers import load_head

    run_dir = resolve_run(run, runs_dir)
    config = load_run_config(run_dir)
    recipe = run_recipe(run_dir, config)
    backbone = rebuild_backbone(run_dir, recipe, weights)
    top = FrozenTop(recipe, weights) if frozen_top(config) else None
    head = load_head(run_dir)
    given = backbone.feature_shape if top is None else top.output_shape
    expected = tuple(getattr(head, "input_shape_", given))
    if expected != given:
        raise PipelineError(
            f"{run_dir}: the head takes features of shape {expected} but {recipe.backbone} at "
            f"{recipe.image_size}x{recipe.image_size} gives {given}; train the head on a cache of this backbone"
        )
    trained = frozenset(config.get(TRAIN_CONTENT) or ())
    return RunModel(run_dir, [str(name) for name in config["class_names"]], recipe, backbone, head, trained, top)


def frozen_top(config: dict) -> bool:
    """Whether the run applied the top block frozen to a cache of an earlier layer: then predicting does as
    training did, the backbone to the cache's layer in the recipe's precision and storage dtype, and the top
    block in float32 over those maps (the whole backbone in the recipe's precision differs by up to 0.05)."""
    return config.get(TOP_KEY, {}).get("block") == "frozen"


def find_images(arguments: list[str]) -> list[LoadTask]:
    """Files as given, and every non-hidden file under folders, in sorted order."""
    tasks = []
    for argument in arguments:
        path = Path(argument)
        if path.is_file():
            tasks.append(LoadTask(argument, str(path)))
        elif path.is_dir():
            tasks.extend(LoadTask(str(path / name), str(path / name)) for name in candidate_files(path))
        else:
            raise PipelineError(f"{argument}: no such file or folder; pass image files or folders of images")
    if not tasks:
        raise PipelineError(f"{' '.join(arguments)}: no files found; pass image files or folders that hold images")
    return tasks


def recipe_decoding(recipe: Recipe, spec: ResizeSpec) -> tuple[bool, str | None]:
    """Whether to decode on the device as the run's cache was, and a line to show when the pixels cannot be the run's."""
    if recipe.decoder == PILLOW:
        return False, None
    from pipeline.extraction import device_decode

    reason = device_decode.unavailable(spec)
    if reason:
        return False, (
            f"the run's features were decoded by {recipe.decoder}, which cannot run here ({reason}); "
            "Pillow decodes these images, so probabilities may differ slightly from the run's"
        )
    here = device_decode.decoder_label()
    if here != recipe.decoder:
        return True, f"the run's features were decoded by {recipe.decoder}, these images by {here}"
    return True, None


def decoded_batches(
    tasks: list[LoadTask], recipe: Recipe, spec: ResizeSpec, batch_size: int, workers: int | None
) -> tuple[Iterator[DecodedBatch], str | None]:
    """Batches decoded as the run's cache was (Pillow or the device decoder), and the note :func:`recipe_decoding` gives."""
    on_device, note = recipe_decoding(recipe, spec)
    if not on_device:
        return iter_batches(tasks, spec, batch_size, workers), note
    from pipeline.extraction.device_decode import iter_device_batches

    return iter_device_batches(tasks, spec, batch_size, workers), note


def run_predict(
    model: RunModel,
    images: list[str],
    out: str | Path,
    batch_size: int = 32,
    workers: int | None = None,
    include_seen: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> PredictResult:
    """Score ``images`` and write ``out``: ``path,predicted,confidence,p_<class>...``.

    Images with the content of the run's training images (under any name) are refused, since
    their predictions say nothing of how the run does on new images; ``include_seen`` scores
    them and marks them in a ``seen_in_training`` column. ``max_pixels`` is the decompression-bomb
    limit (``extract --max-pixels``); it decides which files are read, never their pixels.
    """
    started = time.perf_counter()
    tasks = find_images(images)
    recipe = model.recipe
    spec = ResizeSpec(recipe.image_size, recipe.resize, recipe.interpolation, max_pixels)
    batches, note = decoded_batches(tasks, recipe, spec, batch_size, workers)
    paths, parts, skipped, seen = [], [], [], []
    with closing(batches):  # the decoding threads are joined here, not by a garbage collection (see local_engine)
        for batch in batches:
            skipped.extend(batch.skipped)
            if batch.count:
                features = model.features(batch.images)[: batch.count]
                parts.append(model.probabilities(features))
                paths.extend(record.path for record in batch.records)
                seen.extend(record.content_hash[:CONTENT_KEY_DIGITS] in model.trained_content for record in batch.records)
    if any(seen) and not include_seen:
        raise PipelineError(
            f"{sum(seen)} of the {len(seen)} images have the same content as training images of run "
            f"{model.run_dir.name!r} (e.g. {paths[seen.index(True)]}); their predictions say nothing of new images: "
            "remove them, or pass --include-seen to mark them in a seen_in_training column"
        )
    probabilities = np.concatenate(parts) if parts else np.zeros((0, len(model.class_names)))
    result = PredictResult(Path(out), model.class_names, paths, probabilities, skipped, time.perf_counter() - started, seen,
                           [note] if note else [])
    write_predictions(
        result.out, result.paths, result.probabilities, result.class_names, seen=seen if include_seen else None
    )
    return result
