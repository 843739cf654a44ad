"""The learning curve of a run (loss and accuracy per epoch, training and validation) as inline SVG.

This is the picture the bottleneck-features recipe's readers look at: it shows at a
glance whether the head is still learning, has converged, or overfits.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

WIDTH, HEIGHT = 360, 220
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 48, 12, 26, 34
COLOURS = {"train": "#1f6fb4", "val": "#e0731a"}
# (panel title, history key for training, history key for validation)
PANELS = (("loss", "loss", "val_loss"), ("accuracy", "accuracy", "val_accuracy"))


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _panel(title: str, series: dict[str, list[float]]) -> str:
    """One chart: epochs on x, the metric on y, one polyline per series."""
    values = [v for points in series.values() for v in _finite(points)]
    low, high = min(values), max(values)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    epochs = max(len(points) for points in series.values())
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def x(epoch: int) -> float:
        return MARGIN_LEFT + (plot_w * epoch / (epochs - 1) if epochs > 1 else plot_w / 2)

    def y(value: float) -> float:
        return MARGIN_TOP + plot_h * (high - value) / (high - low)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{html.escape(title)} per epoch">',
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)} per epoch</text>',
        f'<rect x="{MARGIN_LEFT}" y="{MARGIN_TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#bbb"/>',
    ]
    for value in (low, (low + high) / 2, high):
        parts.append(
            f'<text x="{MARGIN_LEFT - 4}" y="{y(value) + 4:.1f}" text-anchor="end" font-size="10">{value:.3g}</text>'
        )
    parts.append(f'<text x="{MARGIN_LEFT}" y="{HEIGHT - 18}" font-size="10">1</text>')
    parts.append(f'<text x="{WIDTH - MARGIN_RIGHT}" y="{HEIGHT - 18}" text-anchor="end" font-size="10">{epochs}</text>')
    parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT - 6}" text-anchor="middle" font-size="10">epoch</text>')
    for label, points in series.items():
        coordinates = " ".join(
            f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(points) if isinstance(v, (int, float)) and math.isfinite(v)
        )
        parts.append(
            f'<polyline class="curve-{label}" points="{coordinates}" fill="none" stroke="{COLOURS[label]}" stroke-width="2"/>'
        )
    legend_x = MARGIN_LEFT + 8
    for offset, label in enumerate(series):
        ly = MARGIN_TOP + 14 + 14 * offset
        parts.append(f'<line x1="{legend_x}" y1="{ly - 4}" x2="{legend_x + 16}" y2="{ly - 4}" stroke="{COLOURS[label]}" stroke-width="2"/>')
        parts.append(f'<text x="{legend_x + 20}" y="{ly}" font-size="10">{label}</text>')
    parts.append("</svg>")
    return "".join(parts)


def learning_curve_svg(history: dict) -> str | None:
    """Loss and accuracy panels from a Keras ``history.json``; None when the run has no per-epoch history.

    Heads without epochs (logistic regression) have nothing to draw.
    """
    panels = []
    for title, train_key, val_key in PANELS:
        series = {
            label: list(history[key])
            for label, key in (("train", train_key), ("val", val_key))
            if isinstance(history.get(key), list) and _finite(history[key])
        }
        if series and max(len(points) for points in series.values()) > 1:
            panels.append(_panel(title, series))
    return "".join(panels) or None
