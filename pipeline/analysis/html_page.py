"""Self-contained HTML pages for the error report and the label audit.

Everything the page shows is inside the one file: thumbnails are base64 JPEGs, the
confusion matrix is inline SVG, and there are no scripts, fonts or links to fetch, so
the page opens the same offline, from an email attachment, or years later. Every piece
of text goes through ``html.escape``: class and file names are user data.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from features_cache import atomic
from pipeline.extraction.images import ImageReadError, ResizeSpec, decoded

THUMBNAIL_SIZE = 128
THUMBNAIL_MAX_PIXELS = 1 << 40
CELL = 34

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 28px; }
.summary { font-size: 1.05em; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 8px; width: 180px; font-size: 0.85em; }
.card img { display: block; width: 128px; height: 128px; object-fit: contain; margin: 0 auto 6px;
  image-rendering: pixelated; background: #f4f4f4; }
.missing { width: 128px; height: 128px; margin: 0 auto 6px; background: #fdecea; color: #8a1c12;
  font-size: 0.8em; overflow-wrap: anywhere; display: flex; align-items: center; text-align: center; }
.path { color: #555; overflow-wrap: anywhere; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
"""


@dataclasses.dataclass(frozen=True)
class Card:
    """One image on the page: its file, and label lines such as ``true: cat``."""

    path: str
    absolute: Path
    lines: Sequence[str]


@dataclasses.dataclass(frozen=True)
class ClassMetrics:
    name: str
    precision: float
    recall: float
    f1: float
    support: int


def thumbnail_uri(path: Path, size: int = THUMBNAIL_SIZE) -> str | None:
    """A ``data:`` URI of a small JPEG of the image, or None if it cannot be read.

    Decoded by stage one's own code (orientation, colour modes, 16-bit, CMYK, transparency on
    its background), so every image that has features has a thumbnail showing what they saw.
    The pixel limit is not applied again: an image with a row already passed extract's.
    """
    try:
        data = Path(path).read_bytes()
        spec = ResizeSpec(size, "crop", max_pixels=THUMBNAIL_MAX_PIXELS)
        jpeg = decoded(data, spec, lambda image: _thumbnail_jpeg(image, size))
    except (OSError, ImageReadError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _thumbnail_jpeg(image: Image.Image, size: int) -> bytes:
    """At most ``size`` on its longer side; small images (digits) scaled up with whole pixels."""
    image = image.copy()
    image.thumbnail((size, size))
    if image.width < size // 2 or image.height < size // 2:
        scale = size / max(image.width, image.height)
        new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(new_size, Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def card_html(card: Card) -> str:
    uri = thumbnail_uri(card.absolute)
    if uri is None:
        reason = "image not found at" if not card.absolute.exists() else "cannot read image at"
        picture = f'<div class="missing">{html.escape(reason)} {html.escape(str(card.absolute))}</div>'
    else:
        picture = f'<img src="{uri}" alt="{html.escape(card.path, quote=True)}">'
    lines = "".join(f"<div>{html.escape(line)}</div>" for line in card.lines)
    return f'<div class="card">{picture}<div class="path">{html.escape(card.path)}</div>{lines}</div>'


def confusion_svg(matrix: np.ndarray, class_names: Sequence[str]) -> str:
    """The confusion matrix (rows: true, columns: predicted) as a shaded inline SVG grid."""
    n = len(class_names)
    label_width = 8 + 7 * max((len(name) for name in class_names), default=1)
    width, height = label_width + n * CELL + 10, label_width + n * CELL + 10
    peak = max(int(matrix.max()), 1) if matrix.size else 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="confusion" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11" role="img"><title>confusion matrix: rows true, columns predicted</title>'
    ]
    for i, name in enumerate(class_names):
        label = html.escape(name)
        y = label_width + i * CELL + CELL / 2 + 4
        parts.append(f'<text x="{label_width - 4}" y="{y:.0f}" text-anchor="end">{label}</text>')
        x = label_width + i * CELL + CELL / 2 + 4
        parts.append(
            f'<text x="{x:.0f}" y="{label_width - 4}" text-anchor="start" transform="rotate(-90 {x:.0f} {label_width - 4})">{label}</text>'
        )
    for i in range(n):
        for j in range(n):
            count = int(matrix[i, j])
            shade = count / peak
            fill = f"rgb({int(255 - 200 * shade)},{int(255 - 120 * shade)},255)" if i == j else (
                f"rgb(255,{int(255 - 180 * shade)},{int(255 - 180 * shade)})"
            )
            x, y = label_width + j * CELL, label_width + i * CELL
            parts.append(f'<rect x="{x}" y="{y}" width="{CELL}" height="{CELL}" fill="{fill}" stroke="#bbb"/>')
            if count:
                parts.append(f'<text x="{x + CELL / 2:.0f}" y="{y + CELL / 2 + 4:.0f}" text-anchor="middle">{count}</text>')
    parts.append("</svg>")
    return "".join(parts)


def metrics_table(rows: Sequence[ClassMetrics]) -> str:
    body = "".join(
        f"<tr><td>{html.escape(r.name)}</td><td>{r.precision:.3f}</td><td>{r.recall:.3f}</td>"
        f"<td>{r.f1:.3f}</td><td>{r.support}</td></tr>"
        for r in rows
    )
    return (
        '<table class="metrics"><tr><th>class</th><th>precision</th><th>recall</th><th>f1</th><th>support</th></tr>'
        f"{body}</table>"
    )


def per_class_metrics(matrix: np.ndarray, class_names: Sequence[str]) -> list[ClassMetrics]:
    """Precision, recall and F1 per class from a confusion matrix (0 where undefined)."""
    true_positive = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    support = matrix.sum(axis=1)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    return [
        ClassMetrics(name, float(p), float(r), float(f), int(s))
        for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
    ]


def render_page(title: str, summary: Sequence[str], sections: Sequence[tuple[str, str]]) -> str:
    """A whole page: a title, summary lines, then (heading, inner HTML) sections."""
    lines = "".join(f"<p>{html.escape(line)}</p>" for line in summary if line)
    body = "".join(f"<section><h2>{html.escape(heading)}</h2>{inner}</section>" for heading, inner in sections)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f'<body><h1>{html.escape(title)}</h1><div class="summary">{lines}</div>{body}</body></html>\n'
    )


def cards_html(cards: Sequence[Card]) -> str:
    return '<div class="cards">' + "".join(card_html(card) for card in cards) + "</div>"


def write_page(path: Path, page: str) -> Path:
    """Write atomically, so a reader never sees half a page."""
    atomic.write_text(path, page)
    return path
