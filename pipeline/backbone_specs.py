"""What is known about each backbone without importing Keras: cheap enough for the no-op path."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """A ``keras.applications`` constructor by name and the facts needed to use and explain it."""

    constructor: str
    preprocessing: str
    weights_file: str
    min_size: int = 32


BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec("VGG16", "caffe", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "resnet50": BackboneSpec("ResNet50", "caffe", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "mobilenetv2": BackboneSpec("MobileNetV2", "tf", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
}


def keras_models_dir() -> Path:
    """Where ``keras.utils.get_file(cache_subdir="models")`` keeps downloaded weights."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def weights_path(backbone: str, weights: str) -> Path | None:
    """The file a ``--weights`` value loads from, or None for random weights."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return keras_models_dir() / BACKBONES[backbone].weights_file
    return Path(weights).expanduser()


def cpu_has_amx() -> bool:
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
