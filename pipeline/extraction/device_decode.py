"""JPEG decoding on the GPU: ``torchvision.io.decode_jpeg(device="cuda")`` (nvJPEG) in batches.

On a GPU host the CPU decoders, not the model, are the limit (about 130 img/s per core
for Pillow against thousands for the model). Here CPU threads only read and hash the
files; JPEGs are decoded and resized (bilinear, antialiased) on the device, batch by
batch, and the batch stays there for the backbone. Anything nvJPEG should not or cannot
take goes through the CPU loader for that file alone, with its exact pixels and skip
reasons: other formats, CMYK and other modes, EXIF-rotated photos, images over the
pixel limit, and files the device decoder refuses. Pixels differ slightly from Pillow's
(features within cosine 0.99), so the cache's recipe names the decoder.

``PIPELINE_DEVICE_DECODE=pillow-cpu`` runs this whole path on the CPU with Pillow standing
in for nvJPEG (file reads, batching, fallbacks, the resize on torch tensors): how the tests
exercise it on machines without a GPU or a torchvision build that matches their torch.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from PIL import Image

from features_cache.records import TRANSIENT, FileRecord, FileStamp, SkippedFile, content_hash
from pipeline.extraction.images import DecodeBudget, ResizeSpec, default_budget
from pipeline.extraction.loader import DecodedBatch, LoadTask, default_workers, load_file

JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
EXIF_ORIENTATION = 0x0112


STAND_IN = "pillow-cpu"


def device_name() -> str:
    """``cuda``, or the tests' stand-in: Pillow decoding into CPU tensors."""
    return os.environ.get("PIPELINE_DEVICE_DECODE", "cuda")


def unavailable(spec: ResizeSpec) -> str | None:
    """Why the device decoder cannot run here (None when it can)."""
    import keras

    if keras.backend.backend() != "torch":
        return f"it needs the torch Keras backend (this is {keras.backend.backend()}; set KERAS_BACKEND=torch)"
    import torch

    if device_name() != STAND_IN:
        try:
            import torchvision.io  # noqa: F401 - only whether it is installed
        except (ImportError, RuntimeError):  # RuntimeError: a build for another torch
            return "torchvision is not installed (pip install the torchvision build that matches torch)"
        if not torch.cuda.is_available():
            return "no CUDA GPU is visible to PyTorch"
    if (spec.resize, spec.interpolation) != ("stretch", "bilinear"):
        return "it resizes with --resize stretch --interpolation bilinear only"
    return None


def decoder_label() -> str:
    """What the recipe records: the library, its version and the device type."""
    if device_name() == STAND_IN:
        return STAND_IN
    import torchvision

    return f"torchvision-{torchvision.__version__.split('+')[0]}-cuda"


@dataclasses.dataclass
class _Read:
    """One file read and hashed on a CPU thread, and whether the device may decode it."""

    task: LoadTask
    data: bytes | None = None
    record: FileRecord | None = None
    on_device: bool = False
    cpu_result: tuple[np.ndarray | None, FileRecord | SkippedFile] | None = None


def _read(task: LoadTask, spec: ResizeSpec, budget: DecodeBudget) -> _Read:
    """Bytes and hash for a plain RGB or grey baseline-size JPEG; the CPU loader's whole result otherwise."""
    try:
        stamp = FileStamp.of(task.absolute)
        with open(task.absolute, "rb") as handle:
            data = handle.read()
    except OSError as error:
        skipped = SkippedFile(task.path, f"cannot read file ({error.strerror})", FileStamp(-1, -1), TRANSIENT)
        return _Read(task, cpu_result=(None, skipped))
    # a JPEG cut short lacks its end marker: nvJPEG may fill the rest grey where Pillow refuses it
    if data.startswith(JPEG_MAGIC) and data.endswith(JPEG_END) and _plain_jpeg(data, spec):
        return _Read(task, data, FileRecord(task.path, content_hash(data), stamp), on_device=True)
    return _Read(task, cpu_result=load_file(task, spec, budget))


def _plain_jpeg(data: bytes, spec: ResizeSpec) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            return image.mode in ("RGB", "L") and width * height <= spec.max_pixels and orientation == 1
    except Exception:  # noqa: BLE001 - anything Pillow cannot parse goes to the CPU path, which says why
        return False


class _DeviceDecoder:
    def __init__(self, spec: ResizeSpec) -> None:
        import torch

        self.torch = torch
        self.stand_in = device_name() == STAND_IN
        self.device = torch.device("cpu" if self.stand_in else "cuda")
        self.size = spec.size

    def decode(self, items: list[_Read]) -> list[object | None]:
        """Device tensors (HWC uint8, resized) per item; None where the device decoder refused the file."""
        encoded = [self.torch.frombuffer(bytearray(item.data), dtype=self.torch.uint8) for item in items]
        try:
            images = self._decode_jpegs(encoded)
        except RuntimeError:
            images = [self._one(data) for data in encoded]  # isolate the file that broke the batch
        return [None if image is None else self._resize(image) for image in images]

    def _decode_jpegs(self, encoded: list) -> list:
        """CHW uint8 RGB tensors on the device, one nvJPEG call for the whole batch."""
        if self.stand_in:
            return [self._pillow(data) for data in encoded]
        from torchvision.io import ImageReadMode, decode_jpeg

        return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)

    def _pillow(self, data) -> object:
        try:
            with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
                pixels = np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as error:
            raise RuntimeError(str(error)) from None
        return self.torch.from_numpy(pixels.copy()).permute(2, 0, 1)

    def _one(self, data) -> object | None:
        try:
            return self._decode_jpegs([data])[0]
        except RuntimeError:
            return None

    def _resize(self, image) -> object:
        resized = self.torch.nn.functional.interpolate(
            image[None].float(), size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
        )
        return resized[0].round().clamp(0, 255).to(self.torch.uint8).permute(1, 2, 0)

    def to_device(self, pixels: np.ndarray) -> object:
        return self.torch.from_numpy(pixels).to(self.device)


def iter_device_batches(
    tasks: Sequence[LoadTask],
    spec: ResizeSpec,
    batch_size: int,
    workers: int | None = None,
    prefetch: int = 2,
    budget: DecodeBudget | None = None,
) -> Iterator[DecodedBatch]:
    """Like :func:`pipeline.extraction.loader.iter_batches`, but ``images`` is a uint8 NHWC tensor on the device.

    Every ``batch_size`` tasks become one batch (fewer real rows when files are skipped);
    files are read ``prefetch`` batches ahead on CPU threads.
    """
    budget = budget or default_budget()
    decoder = _DeviceDecoder(spec)
    chunks = [tasks[start : start + batch_size] for start in range(0, len(tasks), batch_size)]
    with ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="read") as pool:
        pending: collections.deque[list[Future]] = collections.deque()
        upcoming = iter(chunks)
        for chunk in upcoming:
            pending.append([pool.submit(_read, task, spec, budget) for task in chunk])
            if len(pending) > prefetch:
                break
        while pending:
            reads = [future.result() for future in pending.popleft()]
            following = next(upcoming, None)
            if following is not None:
                pending.append([pool.submit(_read, task, spec, budget) for task in following])
            yield _assemble(reads, decoder, spec, batch_size, pool, budget)


def _assemble(
    reads: list[_Read], decoder: _DeviceDecoder, spec: ResizeSpec, batch_size: int, pool: ThreadPoolExecutor,
    budget: DecodeBudget,
) -> DecodedBatch:
    """One batch in task order: device decodes, CPU results, and CPU retries of files the device refused."""
    torch = decoder.torch
    on_device = [item for item in reads if item.on_device]
    decoded = dict(zip((id(item) for item in on_device), decoder.decode(on_device))) if on_device else {}
    retries = {id(item): pool.submit(load_file, item.task, spec, budget) for item in on_device if decoded[id(item)] is None}
    images = torch.zeros((batch_size, spec.size, spec.size, 3), dtype=torch.uint8, device=decoder.device)
    records: list[FileRecord] = []
    skipped: list[SkippedFile] = []
    for item in reads:
        image = decoded.get(id(item))
        if image is not None:
            record = item.record
        else:
            pixels, record = retries[id(item)].result() if id(item) in retries else item.cpu_result
            if pixels is None:
                skipped.append(record)
                continue
            image = decoder.to_device(pixels)
        images[len(records)] = image
        records.append(record)
    return DecodedBatch(images, len(records), records, skipped)
