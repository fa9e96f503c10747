"""Point labels that do not overlap: a greedy placement for the report's scatter plots.

    ax.scatter(xs, ys)
    fig.tight_layout()                       # fix the axes' pixel size first: offsets are measured in it
    texts = place_labels(ax, xs, ys, ["q4_k_m (llama.cpp)", ...], avoid=[ax.get_legend()])

Each label tries offsets on rings around its point and keeps the one whose text box (measured by the
renderer) overlaps least with the labels already placed, every marker, the legend and the plotted
lines, and stays inside the axes. A label moved off its first ring gets a thin leader line. Points
are taken most crowded first, so the labels with the fewest free places choose before the others
fill them. No new dependency: adjustText does the same with a force simulation, which is more than
a dozen points need.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from matplotlib.transforms import Bbox

# offsets in points: the first ring sits next to the marker; later rings need a leader line
_RINGS = (7, 16, 28, 42, 60, 80, 105)
_ANGLES = (30, 150, 330, 210, 0, 180, 90, 270, 60, 120, 300, 240)
_MARKER_PT = 4.5  # half the side of the box kept free around each marker (s=60 is ~7.7 pt wide)
_PAD_PX = 2.0  # clear space kept between two labels


def place_labels(ax, xs: Sequence[float], ys: Sequence[float], texts: Sequence[str], *, avoid=(), fontsize=7) -> list:
    """Annotate point i with ``texts[i]``, each at the least-overlapping offset; returns the annotations
    in the order of ``texts``. ``avoid``: further artists (a legend) whose boxes labels keep off."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72
    pts = ax.transData.transform(np.column_stack([xs, ys]).astype(float))
    r = _MARKER_PT * px_per_pt
    markers = [Bbox.from_extents(x - r, y - r, x + r, y + r) for x, y in pts]
    hard = [a.get_window_extent(renderer) for a in avoid if a is not None]
    line_pts = _line_points(ax)
    frame = ax.get_window_extent(renderer)
    sizes = []
    for t in texts:
        probe = ax.text(0, 0, t, fontsize=fontsize, transform=None)
        bb = probe.get_window_extent(renderer)
        sizes.append((bb.width, bb.height))
        probe.remove()
    crowd = [sum(np.hypot(*(p - q)) < 60 * px_per_pt for q in pts) for p in pts]
    placed: list[Bbox] = []
    out: list = [None] * len(texts)
    for i in sorted(range(len(texts)), key=lambda k: (-crowd[k], k)):
        best = None
        for ring, radius in enumerate(_RINGS):
            for angle in _ANGLES:
                dx, dy = radius * math.cos(math.radians(angle)), radius * math.sin(math.radians(angle))
                box = _box(pts[i], dx * px_per_pt, dy * px_per_pt, *sizes[i])
                clash = (1000 * sum(_overlap(box, b.padded(_PAD_PX)) for b in placed)
                         + 1000 * sum(_overlap(box, b) for b in hard)
                         + 1000 * (box.width * box.height - _overlap(box, frame))
                         + 50 * sum(_overlap(box, m) for m in markers)
                         + 20 * sum(box.contains(x, y) for x, y in line_pts)
                         + 200 * _closer_points(box, pts, i))
                cost = clash + ring * 4 + radius * 0.1
                if best is None or cost < best[0]:
                    best = (cost, clash, ring, dx, dy, box)
            if best[1] == 0:  # a free place on this ring: every farther one costs more
                break
        _, _, ring, dx, dy, box = best
        ha = "left" if dx > 0.5 else "right" if dx < -0.5 else "center"
        va = "bottom" if dy > 0.5 else "top" if dy < -0.5 else "center"
        # a leader line when the label left its first ring, or when a neighbour's marker is so close
        # that the label alone would not say which of the two it names
        near = any(j != i and np.hypot(*(pts[j] - pts[i])) < 3 * r for j in range(len(pts)))
        arrow = dict(arrowstyle="-", lw=0.5, color="0.45", shrinkA=1, shrinkB=_MARKER_PT) if ring > 0 or near else None
        out[i] = ax.annotate(texts[i], (xs[i], ys[i]), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va,
                             fontsize=fontsize, arrowprops=arrow, zorder=4)
        placed.append(box)
    return out


def _box(p, dx: float, dy: float, w: float, h: float) -> Bbox:
    """The text's pixel box for an anchor at ``p + (dx, dy)`` with the alignment place_labels uses."""
    x, y = p[0] + dx, p[1] + dy
    x0 = x if dx > 0.5 else x - w if dx < -0.5 else x - w / 2
    y0 = y if dy > 0.5 else y - h if dy < -0.5 else y - h / 2
    return Bbox.from_bounds(x0, y0, w, h)


def _overlap(a: Bbox, b: Bbox) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _distance(box: Bbox, p) -> float:
    return float(np.hypot(max(box.x0 - p[0], 0, p[0] - box.x1), max(box.y0 - p[1], 0, p[1] - box.y1)))


def _closer_points(box: Bbox, pts: np.ndarray, i: int) -> int:
    """Other points nearer to the label than its own: a reader would pair the label with them."""
    own = _distance(box, pts[i])
    return sum(j != i and _distance(box, p) < own for j, p in enumerate(pts))


def _line_points(ax, step_px: float = 6.0) -> list[tuple[float, float]]:
    """Pixel samples along the axes' lines (Pareto front, reference line): labels should not sit on them."""
    out = []
    for line in ax.get_lines():
        xy = line.get_transform().transform(line.get_xydata())
        for a, b in zip(xy[:-1], xy[1:]):
            n = max(1, int(np.hypot(*(b - a)) / step_px))
            out += [tuple(a + (b - a) * k / n) for k in range(n + 1)]
    return out
