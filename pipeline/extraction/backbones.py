"""The frozen backbone: a ``keras.applications`` model that takes raw uint8 RGB batches.

Preprocessing runs inside the model, in float32, exactly once, with the backbone's own
``preprocess_input`` convention; the output is cast to the cache's storage dtype on the
device. That keeps host-to-device traffic at one byte per pixel and the same code path
on the TensorFlow, JAX and PyTorch backends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import keras
import numpy as np

from features_cache.schema import OUTPUT_LAYER
from pipeline.errors import PipelineError
from pipeline.extraction.backbone_specs import BACKBONES, BackboneSpec, cpu_flags, keras_models_dir

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
DTYPE_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="pipeline")
class Preprocess(keras.layers.Layer):
    """``keras.applications`` preprocessing as a layer: uint8 RGB in, float32 out.

    ``caffe``: RGB to BGR, then subtract the ImageNet mean (VGG16, ResNet50);
    ``tf``: scale to [-1, 1] (MobileNetV2); ``torch``: scale to [0, 1], then normalise.
    """

    def __init__(self, mode: str, **kwargs) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf", "torch"):
            raise ValueError(f"mode must be 'caffe', 'tf' or 'torch'. Received: mode={mode!r}")
        self.mode = mode

    def call(self, images):
        x = keras.ops.cast(images, "float32")
        if self.mode == "caffe":
            return keras.ops.flip(x, axis=-1) - keras.ops.convert_to_tensor(CAFFE_MEAN_BGR, "float32")
        if self.mode == "tf":
            return x / 127.5 - 1.0
        mean = keras.ops.convert_to_tensor(TORCH_MEAN, "float32")
        std = keras.ops.convert_to_tensor(TORCH_STD, "float32")
        return (x / 255.0 - mean) / std

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="pipeline")
class CastTo(keras.layers.Layer):
    """Casts to a fixed dtype, bypassing the mixed-precision policy (used for the output)."""

    def __init__(self, target: str, **kwargs) -> None:
        super().__init__(autocast=False, **kwargs)
        self.target = target

    def call(self, x):
        return keras.ops.cast(x, self.target)

    def get_config(self) -> dict:
        return {**super().get_config(), "target": self.target}


@dataclasses.dataclass
class Backbone:
    """A built extractor and the facts that identify its features."""

    name: str
    model: keras.Model
    weights: str
    weights_sha256: str
    preprocessing: str
    precision: str

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.model.output_shape[1:])

    def __post_init__(self) -> None:
        self._step = ForwardStep.for_model(self.model)

    def expect(self, images: int) -> None:
        """Size the step to the job: on PyTorch, ``torch.compile`` pays for its start-up from
        :data:`TORCH_COMPILE_FROM_IMAGES` images on (3.2x eager in bfloat16 on a 2-core CPU)."""
        if keras.backend.backend() == "torch" and images >= TORCH_COMPILE_FROM_IMAGES:
            self._step = ForwardStep.for_model(self.model, compile_torch=True)

    def to_device(self, images: np.ndarray):
        """Start copying a uint8 batch to the device; returns at once where the backend allows."""
        return self._step.to_device(images)

    def predict(self, images):
        """Features of one fixed-shape uint8 batch (host or device), still on the device.

        JAX and PyTorch on a GPU return before the batch is computed, so the caller can
        dispatch the next one; :meth:`to_numpy` (run off the critical path) waits for it.
        """
        return self._step.run(images)

    def to_numpy(self, features) -> np.ndarray:
        return self._step.to_numpy(features)

    @property
    def step_name(self) -> str:
        """How the forward pass runs: ``tf.function``, ``jax.jit``, ``torch.compile`` or ``torch eager``."""
        return self._step.name

    def features(self, images: np.ndarray) -> np.ndarray:
        """One batch start to finish, on the host: for callers that do not overlap batches."""
        return self.to_numpy(self.predict(self.to_device(images)))


TORCH_COMPILE_FROM_IMAGES = 1000


@dataclasses.dataclass(frozen=True)
class ForwardStep:
    """The model's inference pass compiled once for the active backend (fixed shapes: no retracing),
    with the backend's way to move batches in and features out."""

    to_device: Callable[[np.ndarray], object]
    run: Callable[[object], object]
    to_numpy: Callable[[object], np.ndarray]
    name: str

    @classmethod
    def for_model(cls, model: keras.Model, compile_torch: bool = False) -> ForwardStep:
        backend = keras.backend.backend()
        if backend == "jax":
            return _jax_step(model)
        if backend == "tensorflow":
            import tensorflow as tf

            step = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
            return cls(tf.convert_to_tensor, step, lambda features: features.numpy(), "tf.function")
        if backend == "torch":
            return _torch_step(model, compile_torch)
        return cls(lambda images: images, model.predict_on_batch, keras.ops.convert_to_numpy, "predict_on_batch")


def _jax_step(model: keras.Model) -> ForwardStep:
    """``device_put`` is asynchronous: the next batch is on the device before the current one ends."""
    import jax

    state = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])
    step = jax.jit(lambda trainable, frozen, x: model.stateless_call(trainable, frozen, x, training=False)[0])
    return ForwardStep(jax.device_put, lambda images: step(*state, images), np.asarray, "jax.jit")


def _torch_step(model: keras.Model, compile_torch: bool) -> ForwardStep:
    """On a GPU: pinned host memory and a non-blocking copy; features stay on the device until read."""
    import torch

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    call = torch.compile(lambda x: model(x, training=False)) if compile_torch else lambda x: model(x, training=False)

    def to_device(images):
        if isinstance(images, torch.Tensor):  # decoded on the device already
            return images.to(device)
        tensor = torch.from_numpy(np.ascontiguousarray(images))
        return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor

    def run(images):
        with torch.inference_mode():
            return call(images)

    return ForwardStep(to_device, run, lambda features: features.detach().cpu().numpy(), "torch.compile" if compile_torch else "torch eager")


# CPU flags under which a backend's bfloat16 convolutions beat float32, as measured for VGG16 at 224:
# AMX (TensorFlow ~88 against 8 img/s); AVX512_BF16 on AMD Zen 4, 2 cores: TensorFlow 32 against 16 img/s,
# PyTorch 9.6 against 5.1; JAX 7.8 against 8.0, so JAX stays in float32 there.
FAST_CPU_BFLOAT16 = {
    "tensorflow": ("amx_bf16", "avx512_bf16"),
    "torch": ("amx_bf16", "avx512_bf16"),
    "jax": ("amx_bf16",),
}


@dataclasses.dataclass(frozen=True)
class Device:
    """Where the backbone runs: a GPU's compute capability, or the CPU's flags."""

    backend: str
    gpu_capability: tuple[int, int] | None
    cpu_flags: frozenset[str] = frozenset()


def auto_precision(device: Device) -> str:
    """bfloat16 where the hardware has it (GPUs from Ampere, compute capability 8.0, on; CPUs with
    AMX, or AVX512_BF16 where the backend measured faster), float16 on older GPUs (their tensor
    cores take float16, not bfloat16: T4, V100, P100), float32 elsewhere."""
    if device.gpu_capability is not None:
        return "bfloat16" if device.gpu_capability >= (8, 0) else "float16"
    fast = FAST_CPU_BFLOAT16.get(device.backend, ())
    return "bfloat16" if any(flag in device.cpu_flags for flag in fast) else "float32"


def current_device() -> Device:
    """The active Keras backend's first GPU (its compute capability), else the CPU."""
    backend = keras.backend.backend()
    capability = None
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        if gpus:
            capability = _capability(getattr(gpus[0], "compute_capability", "0.0"))
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            capability = tuple(torch.cuda.get_device_capability(0))
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            capability = tuple(tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0)))
    return Device(backend, capability, cpu_flags() if capability is None else frozenset())


def _capability(text: str) -> tuple[int, int]:
    major, _, minor = str(text).partition(".")
    return (int(major or 0), int(minor or 0))


def has_accelerator() -> bool:
    """Whether the active Keras backend sees a GPU."""
    return current_device().gpu_capability is not None


def tf32_allowed() -> bool | None:
    """Whether float32 matrix work may round through TF32 on this GPU (None on a CPU): recorded beside the features."""
    if not has_accelerator():
        return None
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.experimental.tensor_float_32_execution_enabled())
    if backend == "torch":
        import torch

        return bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)
    import jax

    return jax.config.jax_default_matmul_precision in (None, "tensorfloat32", "default", "bfloat16")


def resolve_precision(precision: str) -> str:
    """``auto`` by the device (:func:`auto_precision`); other values as given."""
    if precision not in PRECISIONS:
        raise PipelineError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return auto_precision(current_device()) if precision == "auto" else precision


@contextlib.contextmanager
def dtype_policy(precision: str) -> Iterator[None]:
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(DTYPE_POLICIES[precision])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def weights_sha256(model: keras.Model) -> str:
    """A hash of the weight values themselves: the same for the same weights, whatever the file."""
    digest = hashlib.sha256()
    for variable in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable.value), dtype=np.float32).tobytes())
    return digest.hexdigest()


def _weights_help(name: str, spec: BackboneSpec, image_size: int) -> str:
    filename = spec.weights_file(image_size)
    return (
        f"put {filename} (from the keras-applications release on storage.googleapis.com) "
        f"at {keras_models_dir() / filename}, or pass --weights /path/to/{filename}"
    )


_LEFT_UNLOADED = re.compile(r"no matching group|could not be loaded|retain their freshly-initialized|Skipping variable loading", re.I)


def _build_base(name: str, spec: BackboneSpec, weights: str, image_size: int, seed: int) -> tuple[keras.Model, str]:
    """The bare ``include_top=False`` model and a description of where its weights came from."""
    shape = (image_size, image_size, 3)
    constructor = getattr(keras.applications, spec.constructor)
    if weights == "imagenet":
        try:
            return constructor(include_top=False, weights="imagenet", input_shape=shape), "imagenet"
        except Exception as error:  # noqa: BLE001 - keras raises bare Exception on fetch failures
            reason = str(error).splitlines()[0][:200]
            raise PipelineError(
                f"cannot load the ImageNet weights for {name} ({reason}); {_weights_help(name, spec, image_size)}"
            ) from None
    if weights == "none":
        keras.utils.set_random_seed(seed)
        return constructor(include_top=False, weights=None, input_shape=shape), f"random(seed={seed})"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise PipelineError(
            f"--weights {weights}: no such file; pass 'imagenet', 'none' or the path of a {name} weights .h5 file"
        )
    fix = f"pass a weights file saved from keras.applications.{spec.constructor}(include_top=False)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = constructor(include_top=False, weights=str(path), input_shape=shape)
        except Exception as error:  # noqa: BLE001 - h5py and keras raise many kinds on a bad file
            raise PipelineError(
                f"--weights {path}: cannot load it into {name} include_top=False ({str(error).splitlines()[0][:200]}); {fix}"
            ) from None
    skipped = [w for w in caught if _LEFT_UNLOADED.search(str(w.message))]
    if skipped:
        raise PipelineError(
            f"--weights {path}: {len(skipped)} parts of {name} found no weights in it and would stay random "
            f"({str(skipped[0].message).splitlines()[0][:120]}); {fix}"
        )
    for other in caught:
        warnings.showwarning(other.message, other.category, other.filename, other.lineno)
    return model, str(path.resolve())


def build_backbone(
    name: str = "vgg16",
    *,
    weights: str = "imagenet",
    image_size: int = 224,
    precision: str = "auto",
    storage_dtype: str = "float16",
    seed: int = 0,
    layer: str = OUTPUT_LAYER,
) -> Backbone:
    """A frozen extractor: uint8 (batch, size, size, 3) in, ``storage_dtype`` features out.

    ``layer`` names the layer whose maps come out (the backbone's output by default); the
    weight hash is always the whole backbone's, so it also vouches for the layers after it.
    """
    if name not in BACKBONES:
        raise PipelineError(f"unknown backbone {name!r}; use one of {', '.join(BACKBONES)}")
    spec = BACKBONES[name]
    if image_size < spec.min_size:
        raise PipelineError(f"--image-size {image_size} is too small for {name}; use at least {spec.min_size}")
    precision = resolve_precision(precision)
    with dtype_policy(precision):
        base = _build_base(name, spec, weights, image_size, seed)
    model, source = base
    model.trainable = False
    sha256 = weights_sha256(model)
    if layer != OUTPUT_LAYER:
        model = keras.Model(model.input, _layer(model, name, layer).output, name=f"{name}_to_{layer}")
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="images")
    features = model(Preprocess(spec.preprocessing, name="preprocess")(inputs), training=False)
    outputs = CastTo(storage_dtype, name="features")(features)
    extractor = keras.Model(inputs, outputs, name=f"{name}_features")
    return Backbone(
        name=name,
        model=extractor,
        weights=source,
        weights_sha256=sha256,
        preprocessing=spec.preprocessing,
        precision=precision,
    )


def feature_layers(model: keras.Model) -> list[str]:
    """The layers worth caching: each block's last layer (``block4_pool``, ``conv4_block6_out``), then the output."""
    names = [layer.name for layer in model.layers[1:-1] if layer.name.endswith(("_pool", "_out", "_add"))]
    return names or [layer.name for layer in model.layers[1:-1]]


def _layer(model: keras.Model, backbone: str, layer: str):
    if layer not in [existing.name for existing in model.layers[1:]]:
        raise PipelineError(
            f"--layer {layer}: {backbone} has no such layer; use one of {', '.join(feature_layers(model))} "
            f"or {OUTPUT_LAYER} (its output, {model.layers[-1].name})"
        )
    return model.get_layer(layer)


def build_top(
    name: str, *, weights: str, image_size: int, layer: str, expected_sha256: str, seed: int = 0,
) -> keras.Model:
    """The backbone's layers after ``layer`` as their own float32 model (maps at ``layer`` in, the
    backbone's output out), with the backbone's weights, refused unless their hash is ``expected_sha256``.

    This is what fine-tuning trains on a cache of ``layer`` maps, and what the other heads
    apply frozen to such a cache.
    """
    spec = BACKBONES[name]
    with dtype_policy("float32"):
        base, source = _build_base(name, spec, weights, image_size, seed)
    found = weights_sha256(base)
    if found != expected_sha256:
        raise PipelineError(
            f"--weights {source}: these {name} weights (sha256 {found[:12]}) are not the ones the cache was made with "
            f"(sha256 {expected_sha256[:12]}); pass the weights file the cache was extracted with"
        )
    if layer == OUTPUT_LAYER:
        raise PipelineError(f"the cache holds {name}'s output; there is no block after it to fine-tune")
    start = _layer(base, name, layer)
    inputs = keras.Input(tuple(int(d) for d in start.output.shape[1:]), name=f"{layer}_maps")
    top = keras.Model(start.output, base.output)
    return keras.Model(inputs, top(inputs), name=f"{name}_after_{layer}")
