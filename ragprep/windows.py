"""The window plan: L sites a window, a stride, and the core of each window used for stitching."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class WindowPlan:
    """Windows start every `stride` sites and hold `length` sites; the last one is padded.

    Overlapping windows are stitched by their cores: site i belongs to the window whose core holds it, and
    cores split each overlap in the middle, so every site lies in exactly one core.
    """

    length: int
    stride: int
    n_sites: int

    def __post_init__(self) -> None:
        if not 1 <= self.stride <= self.length:
            raise ValueError(f"window stride must be in 1..{self.length} (the window length), got {self.stride}")
        if self.n_sites < 1:
            raise ValueError("a window plan needs at least one site")

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
        start = int(self.starts[window])
        return slice(start, start + int(self.lengths[window]))

    def valid_mask(self, window: int) -> np.ndarray:
        """bool [length]: True for real sites, False for padding."""
        return np.arange(self.length) < self.lengths[window]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WindowPlan:
        return cls(length=int(data["length"]), stride=int(data["stride"]), n_sites=int(data["n_sites"]))


def pad_window(alleles: np.ndarray, af: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One window's alleles [H, n] (0, 1, -1 missing/masked) and AF [n] -> model inputs padded to `length`:
    tokens int64 [H, length] (REF 0, ALT 1, MASK 2, PAD 3), af float32 [length], valid bool [length]."""
    from ragprep.model import MASK, PAD

    h, n = alleles.shape
    tokens = np.full((h, length), PAD, dtype=np.int64)
    tokens[:, :n] = np.where(alleles < 0, MASK, alleles)
    af_padded = np.zeros(length, dtype=np.float32)
    af_padded[:n] = af
    return tokens, af_padded, np.arange(length) < n
