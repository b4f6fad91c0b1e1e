"""Line charts of a device's health series, as numbers an inline SVG template draws.

Drawn on the hub: the page needs no charting library, and a phone gets a few hundred
bytes of SVG instead of a script.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WIDTH, HEIGHT = 600, 160
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 56, 8, 10, 22
#: Above this many points the markers are left out (the line alone reads better).
MAX_MARKERS = 120


@dataclass
class Chart:
    title: str
    unit: str
    points: list[tuple[float, float]]  # (x, y) in the SVG's coordinates
    low: float | None
    high: float | None
    latest: float | None
    width: int = WIDTH
    height: int = HEIGHT
    left: int = PAD_LEFT
    top: int = PAD_TOP
    bottom: int = HEIGHT - PAD_BOTTOM
    right: int = WIDTH - PAD_RIGHT

    @property
    def polyline(self) -> str:
        return " ".join(f"{x:.1f},{y:.1f}" for x, y in self.points)

    @property
    def markers(self) -> list[tuple[float, float]]:
        return self.points if len(self.points) <= MAX_MARKERS else []


def line_chart(series: list[dict[str, Any]], field: str, *, title: str, unit: str,
               now: float, span_s: float = 86_400) -> Chart:
    """Place the points of ``field`` over the last ``span_s`` seconds (now at the right
    edge) between the lowest and highest value shown."""
    values = [(p["t"], p[field]) for p in series if p.get(field) is not None]
    if not values:
        return Chart(title, unit, [], None, None, None)
    low = min(v for _, v in values)
    high = max(v for _, v in values)
    if high == low:
        low, high = low - 1, high + 1
    start = now - span_s
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    points = [(PAD_LEFT + max(0.0, min(1.0, (t - start) / span_s)) * plot_w,
               PAD_TOP + (1 - (v - low) / (high - low)) * plot_h) for t, v in values]
    return Chart(title, unit, points, low, high, values[-1][1])
