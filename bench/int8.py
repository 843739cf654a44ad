"""``make bench-int8``: post-training INT8 of the frozen VGG16 backbone, against the product's own precisions.

One process, the same real photos (``bench/real_photos.py``) decoded once with stage one's own
decoding, at 224 px:

- throughput of the product's TensorFlow backbone in float32 and bfloat16 (``build_backbone``,
  the bare compiled step on in-memory uint8 batches), and of OpenVINO on the same float32 model
  (float32, bfloat16) and after NNCF's post-training INT8 quantization, calibrated on the
  training split's photos and their mirror images; each timed batch is interleaved across the
  runtimes so that other work on a shared machine slows every row alike;
- each runtime's features against float32 (cosine and relative error per image);
- head accuracy on a fixed stratified split (``logreg`` and ``dense``, the product's heads) on
  each runtime's features, and how often each agrees with float32's predictions;
- the verdict of the adoption rule: INT8 at least 1.5x the default precision's throughput with
  head accuracy unchanged.

OpenVINO and NNCF are not dependencies of the project: ``pip install openvino nncf`` first.

    python -m bench.int8 --weights /path/to/vgg16.weights.h5 --out bench-out
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ADOPT_SPEEDUP = 1.5
DEFAULT = "tensorflow bfloat16"
REFERENCE = "tensorflow float32"


def photos(root: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The real photos as stage one's exact uint8 pixels, their labels and class names."""
    from bench.real_photos import build_classes
    from pipeline.extraction.images import ResizeSpec, read_image

    made = build_classes(root)
    names = sorted(made)
    spec = ResizeSpec(size)
    images, labels = [], []
    for label, name in enumerate(names):
        for path in made[name]:
            images.append(read_image(str(path), spec)[0])
            labels.append(label)
    return np.stack(images), np.array(labels), names


def split(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A stratified two-thirds / one-third split, the same for every runtime."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(labels))
    train, test = train_test_split(rows, test_size=1 / 3, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(test)


def openvino_models(extractor, calibration: np.ndarray, work: Path, batch: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """OpenVINO float32, bfloat16 and NNCF INT8 versions of the product's float32 extractor, one batch in, features out."""
    import nncf
    import openvino as ov

    xml = str(work / "vgg16.xml")
    extractor.export(xml, format="openvino", verbose=False)
    core = ov.Core()
    model = core.read_model(xml)
    dataset = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
    started = time.perf_counter()
    quantized = nncf.quantize(model, dataset, subset_size=len(calibration), preset=nncf.QuantizationPreset.PERFORMANCE)
    print(f"NNCF calibration on {len(calibration)} images: {time.perf_counter() - started:.1f} s", flush=True)
    runtimes = {}
    for name, ir, hint in (("openvino float32", model, "f32"), ("openvino bfloat16", model, "bf16"), ("openvino int8", quantized, "f32")):
        ir = ir.clone()
        ir.reshape([batch, *calibration.shape[1:]])
        compiled = core.compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": hint})
        runtimes[name] = _ov_call(compiled)
    return runtimes


def _ov_call(compiled) -> Callable[[np.ndarray], np.ndarray]:
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def call(images: np.ndarray) -> np.ndarray:
        return np.array(request.infer([images])[output], dtype=np.float32)

    return call


def product_models(weights: str, size: int) -> dict[str, tuple[object, Callable[[np.ndarray], np.ndarray]]]:
    """The product's own backbone in float32 and bfloat16 (float32 features out, for comparison)."""
    from pipeline.extraction.backbones import build_backbone

    built = {}
    for precision in ("float32", "bfloat16"):
        backbone = build_backbone("vgg16", weights=weights, image_size=size, precision=precision, storage_dtype="float32")
        built[f"tensorflow {precision}"] = (backbone.model, lambda images, b=backbone: b.features(images).astype(np.float32))
    return built


def batches(images: np.ndarray, batch: int) -> list[np.ndarray]:
    """Fixed-size batches (the last one padded by repeating rows) so no runtime retraces."""
    out = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, images[: batch - len(chunk)]])
        out.append(chunk)
    return out


def all_features(call: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([call(chunk) for chunk in batches(images, batch)])[: len(images)]


def throughput(runtimes: dict[str, Callable], images: np.ndarray, batch: int, rounds: int) -> dict[str, dict]:
    """img/s per runtime, one timed batch each per round, the runtimes interleaved; after one warm-up batch."""
    chunk = batches(images, batch)[0]
    for call in runtimes.values():
        call(chunk)
    times: dict[str, list[float]] = {name: [] for name in runtimes}
    for _ in range(rounds):
        for name, call in runtimes.items():
            started = time.perf_counter()
            call(chunk)
            times[name].append(time.perf_counter() - started)
    return {
        name: {"img_s_median": batch / statistics.median(t), "img_s_best": batch / min(t), "seconds": t}
        for name, t in times.items()
    }


def similarity(features: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Cosine and relative error (||f - ref|| / ||ref||) per image, against the float32 features."""
    a = features.reshape(len(features), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)
    relative = np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-12)
    return {
        "cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean()),
        "rel_error_mean": float(relative.mean()), "rel_error_max": float(relative.max()),
    }


def heads(features: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray) -> dict[str, np.ndarray]:
    """Test-split predictions of the product's ``logreg`` and ``dense`` heads trained on these features."""
    from classifiers import get_head

    predictions = {}
    for name, settings in (("logreg", {}), ("dense", {"verbose": 0, "seed": 0})):
        head = get_head(name)(**settings).fit(features[train], labels[train])
        predictions[name] = head.predict(features[test])
    return predictions


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def report(results: dict) -> str:
    lines = [
        f"INT8 study: VGG16 at {results['size']} px, batch {results['batch']}, {results['images']} real photos "
        f"({results['train']} train / {results['test']} test), weights {results['weights']}",
        f"CPU: {results['cpu']}, {results['cores']} cores, flags: {', '.join(results['cpu_flags']) or 'none of note'}; "
        f"load average {results['load_before']} before, {results['load_after']} after",
        "",
        f"| runtime | img/s (median, best) | vs {DEFAULT} | cosine vs float32 (min / mean) | rel. error (mean / max) "
        "| logreg acc | dense acc | agree with float32 (logreg / dense) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    default = results["runtimes"][DEFAULT]["img_s_median"]
    for name, row in results["runtimes"].items():
        sim = row["similarity"]
        lines.append(
            f"| {name} | {row['img_s_median']:.1f}, {row['img_s_best']:.1f} | {row['img_s_median'] / default:.2f}x "
            f"| {sim['cosine_min']:.4f} / {sim['cosine_mean']:.4f} | {sim['rel_error_mean']:.4f} / {sim['rel_error_max']:.4f} "
            f"| {row['accuracy']['logreg']:.3f} | {row['accuracy']['dense']:.3f} "
            f"| {row['agreement']['logreg']:.3f} / {row['agreement']['dense']:.3f} |"
        )
    verdict = results["verdict"]
    lines += [
        "",
        f"adopt --precision int8 (>= {ADOPT_SPEEDUP}x {DEFAULT} with head accuracy unchanged): "
        f"{'yes' if verdict['adopt'] else 'no'} (speed-up {verdict['speedup']:.2f}x, "
        f"accuracy change logreg {verdict['accuracy_change']['logreg']:+.3f}, dense {verdict['accuracy_change']['dense']:+.3f})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="VGG16 include_top=False weights .h5 (pretrained: accuracy figures need them)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="timed batches per runtime, interleaved")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args(argv)
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError:
        print("bench.int8 needs OpenVINO and NNCF: pip install openvino nncf", file=sys.stderr)
        return 2
    if not Path(args.weights).is_file():
        print(f"--weights {args.weights}: no such file; pass a VGG16 include_top=False weights .h5", file=sys.stderr)
        return 2
    from bench.throughput import device
    from pipeline.extraction.backbone_specs import cpu_flags

    load_before = load_average()
    work = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    images, labels, names = photos(work / "photos", args.size)
    train, test = split(labels)
    calibration = np.concatenate([images[train], images[train][:, :, ::-1]])
    product = product_models(args.weights, args.size)
    runtimes = {name: call for name, (_, call) in product.items()}
    runtimes.update(openvino_models(product[REFERENCE][0], calibration, work, args.batch))
    speed = throughput(runtimes, images, args.batch, args.rounds)
    features = {name: all_features(call, images, args.batch) for name, call in runtimes.items()}
    predictions = {name: heads(f, labels, train, test) for name, f in features.items()}
    rows = {}
    for name in runtimes:
        rows[name] = {
            **speed[name],
            "similarity": similarity(features[name], features[REFERENCE]),
            "accuracy": {head: float(np.mean(p == labels[test])) for head, p in predictions[name].items()},
            "agreement": {head: float(np.mean(p == predictions[REFERENCE][head])) for head, p in predictions[name].items()},
        }
    int8, default = rows["openvino int8"], rows[DEFAULT]
    change = {head: int8["accuracy"][head] - default["accuracy"][head] for head in ("logreg", "dense")}
    speedup = int8["img_s_median"] / default["img_s_median"]
    facts = device()
    flags = sorted(flag for flag in cpu_flags() if flag in ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "amx_bf16", "amx_tile"))
    results = {
        "size": args.size, "batch": args.batch, "images": len(images), "train": len(train), "test": len(test),
        "classes": names, "calibration_images": len(calibration), "weights": args.weights,
        "cpu": facts["cpu"], "cores": facts["cores"], "cpu_flags": flags,
        "load_before": load_before, "load_after": load_average(),
        "runtimes": rows,
        "verdict": {"speedup": speedup, "accuracy_change": change,
                    "adopt": speedup >= ADOPT_SPEEDUP and all(value >= 0 for value in change.values())},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int8.json").write_text(json.dumps(results, indent=2))
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
