"""The backbone's layers after a cache's layer: fine-tuned by the ``finetune`` head, applied frozen for the others.

A cache of ``block4_pool`` maps serves both: ``finetune`` trains VGG16's block5 on them, and
every other head sees what a ``block5_pool`` cache would hold, block5 run once over the maps.
The block is rebuilt from the recipe (backbone, image size, weights) and its weights are
refused unless they hash to the recipe's ``weights_sha256``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from features_cache import atomic
from features_cache.schema import OUTPUT_LAYER, Recipe
from pipeline.extraction.backbone_specs import weights_arguments

TOPS_DIR = "tops"
TOP_KEY = "top_block"  # in config.json, for a cache of an earlier layer: {"layer": ..., "block": "frozen" | "fine-tuned"}
FROZEN_BATCH = 64


def has_top(recipe: Recipe) -> bool:
    """Whether the cache holds maps of a layer before the backbone's output."""
    return recipe.layer != OUTPUT_LAYER


def build_recipe_top(recipe: Recipe, weights: str | None = None):
    """The recipe's top block as a float32 Keras model, its weights checked against the recipe's hash."""
    from pipeline.extraction.backbones import build_top

    name, seed = weights_arguments(weights or recipe.weights)
    return build_top(recipe.backbone, weights=name, image_size=recipe.image_size, layer=recipe.layer,
                     expected_sha256=recipe.weights_sha256, seed=seed)


def saved_top(recipe: Recipe, runs_dir: Path) -> Path:
    """The top block saved under ``runs_dir/tops/`` (named by backbone, layer, size and weight hash), for ``finetune``'s ``top``."""
    path = Path(runs_dir) / TOPS_DIR / f"{recipe.backbone}-{recipe.layer}-{recipe.image_size}-{recipe.weights_sha256[:16]}.keras"
    top = build_recipe_top(recipe)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path, suffix=".keras") as tmp:
        top.save(tmp)
    return path.resolve()


class FrozenTop:
    """The top block run over cached maps, for heads that train on the backbone's output."""

    def __init__(self, recipe: Recipe, weights: str | None = None) -> None:
        self.model = build_recipe_top(recipe, weights)
        self.model.trainable = False

    def __call__(self, maps: np.ndarray) -> np.ndarray:
        parts = [np.asarray(self.model.predict_on_batch(np.asarray(maps[i : i + FROZEN_BATCH], dtype=np.float32)))
                 for i in range(0, len(maps), FROZEN_BATCH)]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def blocks(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        return (self(block) for block in blocks)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.model.output_shape[1:])
