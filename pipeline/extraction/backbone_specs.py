"""What is known about each backbone without importing Keras: cheap enough for the no-op path."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from pipeline.errors import PipelineError


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """A ``keras.applications`` constructor by name and the facts needed to use and explain it."""

    constructor: str
    preprocessing: str
    weights_template: str
    min_size: int = 32
    weight_sizes: tuple[int, ...] = ()
    """Input sizes with weights of their own (MobileNetV2); any other size loads the 224 file, as Keras does."""

    def weights_file(self, image_size: int = 224) -> str:
        """The file name ``keras.applications`` downloads for this input size."""
        size = image_size if image_size in self.weight_sizes else 224
        return self.weights_template.format(size=size)


BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec("VGG16", "caffe", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "resnet50": BackboneSpec("ResNet50", "caffe", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "mobilenetv2": BackboneSpec(
        "MobileNetV2", "tf", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{size}_no_top.h5",
        weight_sizes=(96, 128, 160, 192, 224),
    ),
}


RANDOM_WEIGHTS = re.compile(r"random\(seed=(-?\d+)\)")


def weights_arguments(weights: str) -> tuple[str, int]:
    """``build_backbone``'s (weights, seed) for a recipe's weights value or a ``--weights`` option."""
    random = RANDOM_WEIGHTS.fullmatch(weights.strip())
    if random:
        return "none", int(random.group(1))
    if weights.lower() in ("none", "random"):
        return "none", 0
    return weights, 0


def keras_models_dir() -> Path:
    """Where ``keras.utils.get_file(cache_subdir="models")`` keeps downloaded weights."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def check_backbone(name: str) -> BackboneSpec:
    """The spec of ``name``, or a one-line error listing the known backbones."""
    if name not in BACKBONES:
        raise PipelineError(f"unknown backbone {name!r}; use --backbone with one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def weights_path(backbone: str, weights: str, image_size: int = 224) -> Path | None:
    """The file a ``--weights`` value loads from, or None for random weights."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return keras_models_dir() / check_backbone(backbone).weights_file(image_size)
    return Path(weights).expanduser()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux); empty where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())

