"""The window plan: L sites a window, a stride, and the core of each window. Written into every store by
`ragprep encode` and handed back by `EmbeddingStore.plan`; spans, cores and coverage come from here only."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from stores.errors import UserError


@dataclass(frozen=True)
class WindowPlan:
    """Windows start every `stride` sites and hold `length` sites; the last one is padded.

    Each site lies in exactly one core: cores split every overlap in the middle (the first core starts at 0,
    the last ends at the last site).
    """

    length: int
    stride: int
    n_sites: int

    def __post_init__(self) -> None:
        if not 1 <= self.stride <= self.length:
            raise UserError("--stride", f"{self.stride} is outside 1..{self.length} (the window length)",
                            f"give a stride between 1 and {self.length}")
        if self.n_sites < 1:
            raise UserError("panel", "no sites to plan windows over", "give a panel with at least one site")

    @classmethod
    def for_sites(cls, n_sites: int, length: int, stride: int | None = None) -> WindowPlan:
        """The plan of `n_sites` sites; the default stride overlaps windows by an eighth, for stitching."""
        return cls(length, stride if stride is not None else max(1, length - length // 8), n_sites)

    @property
    def n_windows(self) -> int:
        if self.n_sites <= self.length:
            return 1
        return math.ceil((self.n_sites - self.length) / self.stride) + 1

    @property
    def starts(self) -> np.ndarray:
        return np.arange(self.n_windows, dtype=np.int64) * self.stride

    @property
    def lengths(self) -> np.ndarray:
        return np.minimum(self.length, self.n_sites - self.starts)

    @property
    def core_starts(self) -> np.ndarray:
        core = self.starts + (self.length - self.stride) // 2
        core[0] = 0
        return core

    @property
    def core_ends(self) -> np.ndarray:
        return np.append(self.core_starts[1:], self.n_sites)

    def sites(self, window: int) -> slice:
        """The panel sites of `window`."""
        start = int(self.starts[window])
        return slice(start, start + int(self.lengths[window]))

    def core(self, window: int) -> slice:
        """The panel sites whose core window is `window`."""
        return slice(int(self.core_starts[window]), int(self.core_ends[window]))

    def segment_windows(self, window: int, size: int, flank: int = 0) -> range:
        """The windows of the segment holding `window`: segments group `max(1, size // stride)` consecutive
        windows, about `size` sites of cores; the last one joins the one before it when the two, with `flank`
        sites before them, fit in `size + 2 flank` sites (a span no longer than any other segment's; a region a
        little over one segment is one). The copying model runs once per segment and query."""
        per, n = max(1, size // self.stride), self.n_windows
        first = window // per * per
        last = (n - 1) // per * per  # the last segment's first window
        if size > 0 and last > 0 and first >= last - per and (
                self.n_sites - max(0, int(self.starts[last - per]) - flank) <= size + 2 * flank):
            return range(last - per, n)
        return range(first, min(first + per, n))

    def key_span(self, window: int, flank: int, segment: int = 0) -> slice:
        """The sites of `window`'s segment (`segment_windows`; 0: the window alone) plus `flank` sites each side,
        clipped to the panel: the span that the copying model, retrieval and the masks of every window of the
        segment run over."""
        windows = self.segment_windows(window, segment, flank)
        start, stop = self.sites(windows[0]).start, self.sites(windows[-1]).stop
        return slice(max(0, start - flank), min(self.n_sites, stop + flank))

    def coverage(self) -> np.ndarray:
        """int64 [n_sites]: how many windows hold each site."""
        count = np.zeros(self.n_sites + 1, dtype=np.int64)
        np.add.at(count, self.starts, 1)
        np.add.at(count, self.starts + self.lengths, -1)
        return np.cumsum(count)[:-1]

    def valid_mask(self, window: int) -> np.ndarray:
        """bool [length]: True for real sites, False for padding."""
        return np.arange(self.length) < self.lengths[window]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WindowPlan:
        return cls(length=int(data["length"]), stride=int(data["stride"]), n_sites=int(data["n_sites"]))
