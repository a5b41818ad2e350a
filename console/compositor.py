"""Paint only the lines that changed.

For a partial update, Textual's compositor crops to one rectangle around every changed
region, and then asks each widget that overlaps it for all of its visible lines, including
containers that their children hide. Under load the console changes a few scattered lines
in a frame (some agent rows, the header, the timeline), so that rectangle covered most of
the screen: such a frame took 4 to 8 ms, and a key press that came meanwhile waited for it.

Here each band of adjacent changed lines is rendered on its own, widgets are asked for just
the lines of the band, and a widget hidden there behind widgets already painted is skipped.
What reaches the terminal is the same (the front widget's text always won); the work is
proportional to the lines that changed. `tests/console/test_compositor.py` checks it cell
by cell against full renders of the real app.

This reaches into Textual's compositor (`_dirty_regions`, `_render_chops`, `_get_renders`),
so it is installed only where those are as this module expects (Textual 8.2).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from textual._compositor import ChopsUpdate, Compositor
from textual.geometry import Region
from textual.screen import Screen
from textual.strip import Strip


@dataclass(frozen=True)
class _Band:
    """Adjacent changed lines [top, bottom), changed between columns [left, right)."""

    top: int
    bottom: int
    left: int
    right: int


def _bands(spans: Iterable[tuple[int, int, int]]) -> list[_Band]:
    """Group (y, x1, x2) spans, sorted by y, into bands of adjacent lines."""
    bands: list[list[int]] = []
    for y, x1, x2 in spans:
        if bands and bands[-1][1] >= y:
            band = bands[-1]
            band[1], band[2], band[3] = max(band[1], y + 1), min(band[2], x1), max(band[3], x2)
        else:
            bands.append([y, y + 1, x1, x2])
    return [_Band(*band) for band in bands]


def _covered(intervals: list[tuple[int, int]], left: int, right: int) -> bool:
    return any(a <= left and right <= b for a, b in intervals)


def _cover(intervals: list[tuple[int, int]], left: int, right: int) -> None:
    """Add [left, right) to disjoint intervals, merging those it touches."""
    merged: list[tuple[int, int]] = []
    for a, b in sorted([*intervals, (left, right)]):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    intervals[:] = merged


class LineCompositor(Compositor):
    _band: _Band | None = None

    def render_partial_update(self) -> ChopsUpdate | None:
        regions = self._dirty_regions.copy()
        self._dirty_regions.clear()
        width, height = self.size
        spans = [span for span in self._regions_to_spans(regions) if 0 <= span[0] < height]
        if not spans:
            return None
        is_changed_line = {y for y, _, _ in spans}.__contains__
        chops: list[Mapping[int, Strip | None]] = []
        for band in _bands(spans):
            self._band = band
            try:
                part = self._render_chops(Region(0, band.top, width, band.bottom - band.top),
                                          is_changed_line)
            finally:
                self._band = None
            if not chops:
                chops = list(part)
            else:
                chops[band.top:band.bottom] = part[band.top:band.bottom]
        return ChopsUpdate(chops, spans, [cuts[1:] for cuts in self.cuts])

    def _get_renders(self, crop: Region | None = None) -> Iterator[tuple[Region, Region,
                                                                         list[Strip]]]:
        band = self._band
        if band is None:  # a full update, or a screenshot
            yield from super()._get_renders(crop)
            return
        covered: list[tuple[int, int]] = []  # columns painted on every line of the band
        for widget, (region, clip) in self.visible_widgets.items():  # front to back
            top = max(clip.y, region.y, band.top)
            bottom = min(clip.bottom, region.bottom, band.bottom)
            left = max(clip.x, region.x)
            right = min(clip.right, region.right)
            if bottom <= top or right <= left or right <= band.left or left >= band.right:
                continue
            if _covered(covered, max(left, band.left), min(right, band.right)):
                continue
            if top == band.top and bottom == band.bottom:
                _cover(covered, left, right)
            yield region, Region(left, top, right - left, bottom - top), widget.render_lines(
                Region(left - region.x, top - region.y, right - left, bottom - top))


def _fits() -> bool:
    """Textual's compositor still has the parts this one builds on."""
    probe = Compositor()
    return all(hasattr(probe, name) for name in (
        "_dirty_regions", "_render_chops", "_get_renders", "_regions_to_spans", "cuts",
        "visible_widgets"))


class FactoryScreen(Screen[None]):
    """The console's main screen, painted by a LineCompositor. It starts with the focus on
    the list of specs (not the tab bar): arrows pick one and Enter opens it."""

    AUTO_FOCUS = "#spec-list"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        if _fits():
            self._compositor = LineCompositor()
