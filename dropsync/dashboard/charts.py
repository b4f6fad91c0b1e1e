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
    #: How far back the left edge is, as text ("24 h", "3 min").
    span: str = "24 h"
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


def duration(seconds: float) -> str:
    for unit, size in (("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def line_chart(series: list[dict[str, Any]], field: str, *, title: str, unit: str,
               now: float, span_s: float = 86_400, min_span_s: float = 60,
               scale: float = 1.0, min_range: float = 2.0) -> Chart:
    """Place the points of ``field`` between the lowest and highest value shown, now at
    the right edge, the oldest point kept (at most ``span_s`` ago) at the left: a device
    heard from for ten minutes gets ten minutes across the chart, not a sliver.

    Values are divided by ``scale`` (bytes shown in KiB, as the inventory shows them), and
    the axis spans at least ``min_range`` around them: a signal moving by 1 dBm is a
    flat line, not one stretched from top to bottom."""
    values = [(p["t"], round(p[field] / scale, 1)) for p in series
              if p.get(field) is not None]
    if not values:
        return Chart(title, unit, [], None, None, None)
    low = min(v for _, v in values)
    high = max(v for _, v in values)
    if high - low < min_range:
        middle = (high + low) / 2
        low, high = round(middle - min_range / 2, 1), round(middle + min_range / 2, 1)
    span_s = min(span_s, max(min_span_s, now - values[0][0]))
    start = now - span_s
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    points = [(PAD_LEFT + max(0.0, min(1.0, (t - start) / span_s)) * plot_w,
               PAD_TOP + (1 - (v - low) / (high - low)) * plot_h) for t, v in values]
    return Chart(title, unit, points, low, high, values[-1][1], duration(span_s))
