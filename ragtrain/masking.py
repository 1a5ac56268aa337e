"""Training masks: which sites of a (sample, window) are hidden from the model and scored.

Every mask is a pure function of (seed, epoch, sample, window) and the window's AF: it draws from its own
generator, seeded from those integers, and never from global numpy/torch RNG state. So the prefetch thread,
other processes and resumed runs all draw the same mask for the same example, and the query tokens and the
retrieval key are built from the same masked alleles (`apply_mask`).

Both haplotypes of a sample share one mask (a SNP array types both haplotypes at the same sites).

How the trainer uses `epoch`: training examples pass the epoch number (0, 1, 2, ...), so each epoch sees a
fresh mask of each example; validation passes `VALIDATION_EPOCH` and window -1 (one mask a sample over the
whole panel, as an array types the same sites everywhere), so its masks are the same in every evaluation (and
in every run with the same seed), and validation metrics compare like with like.

Mask kinds (`MaskSpec.parse`):
- ``random:LO-HI`` (or ``random:R``): a ratio r ~ U[LO, HI] per (sample, window); round(r * n) of the n real
  sites are masked, chosen uniformly.
- ``af:LO-HI``: the same number of masked sites, chosen with weight w = 1 / (MAF + 0.05) (MAF 0 weighs 20,
  MAF 0.05 weighs 10, MAF 0.5 weighs ~1.8): weighted sampling without replacement (Efraimidis-Spirakis keys
  log(u) / w), so the masking probability rises as MAF falls and the ratio is as for ``random``.
- ``array:N:MAF`` (or ``array:N``, MAF 0.05): array-like. Of the real sites with MAF >= MAF, every N-th is
  kept observed, starting at a phase drawn per (seed, epoch, sample, window); every other site is masked.

Invariants for every kind: padding is never masked; at least one real site stays observed; at least one real
site is masked when the window has two or more.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from stores.errors import UserError

VALIDATION_EPOCH = -1
"""The `epoch` validation masks are drawn with: fixed across training epochs (see module docstring)."""

AF_SMOOTH = 0.05
"""`af` masks weigh a site by 1 / (MAF + AF_SMOOTH)."""

_STREAM = 0x6D61736B  # "mask": keeps these streams apart from other users of the same seed

_FORMS = "write random:LO-HI (e.g. random:0.3-0.8), af:LO-HI (e.g. af:0.3-0.8) or array:N:MAF (e.g. array:10:0.05)"

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"


@dataclass(frozen=True)
class MaskSpec:
    """A mask kind and its parameters: `lo`/`hi` (ratio range) for random and af; `every`/`min_maf` for array."""

    kind: str
    lo: float = 0.3
    hi: float = 0.8
    every: int = 10
    min_maf: float = 0.05

    def __post_init__(self) -> None:
        if self.kind not in ("random", "af", "array"):
            raise ValueError(f"unknown mask kind {self.kind!r}; {_FORMS}")
        if not 0.0 <= self.lo <= self.hi <= 1.0:
            raise ValueError(f"mask ratio range must satisfy 0 <= LO <= HI <= 1, got {self.lo}-{self.hi}")
        if self.every < 1:
            raise ValueError(f"array mask keeps every N-th site: N must be >= 1, got {self.every}")
        if not 0.0 <= self.min_maf <= 0.5:
            raise ValueError(f"array mask MAF threshold must be in [0, 0.5], got {self.min_maf}")

    @classmethod
    def parse(cls, text: str, option: str = "--mask") -> MaskSpec:
        """'random:0.3-0.8', 'random:0.5', 'af:0.3-0.8', 'array:10:0.05' or 'array:10' -> MaskSpec.

        Raises a UserError naming `option` and the accepted forms.
        """
        raw = text.strip().lower()
        ratio = re.fullmatch(rf"(random|af):{_NUMBER}(?:-{_NUMBER})?", raw)
        array = re.fullmatch(rf"array:(\d+)(?::{_NUMBER})?", raw)
        try:
            if ratio:
                lo, hi = float(ratio.group(2)), float(ratio.group(3) or ratio.group(2))
                return cls(ratio.group(1), lo=lo, hi=hi)
            if array:
                min_maf = float(array.group(2)) if array.group(2) is not None else cls.min_maf
                return cls("array", every=int(array.group(1)), min_maf=min_maf)
        except ValueError as err:
            raise UserError(option, f"bad mask {text!r}: {err}", _FORMS) from None
        raise UserError(option, f"bad mask {text!r}", _FORMS)

    def __str__(self) -> str:
        if self.kind == "array":
            return f"array:{self.every}:{self.min_maf:g}"
        return f"{self.kind}:{self.lo:g}-{self.hi:g}"


def mask_rng(seed: int, epoch: int, sample: int, window: int) -> np.random.Generator:
    """The generator of one (seed, epoch, sample, window): each integer taken mod 2**64 as a fixed-width word."""
    words = np.array([int(x) % 2**64 for x in (_STREAM, seed, epoch, sample, window)], dtype=np.uint64)
    return np.random.default_rng(np.random.SeedSequence(words))


def mask_for(spec: MaskSpec, seed: int, epoch: int, sample: int, window: int, af: np.ndarray,
             valid: np.ndarray | None = None) -> np.ndarray:
    """bool [n_sites], True = masked (hidden from the model and scored), for one sample in one window.

    `af`: ALT allele frequency [n_sites] from the panel; `valid`: bool [n_sites], False at padding (None: all
    real). A pure function of its arguments.
    """
    af = np.asarray(af, dtype=np.float64)
    n_sites = af.shape[0]
    valid = np.ones(n_sites, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if valid.shape != (n_sites,):
        raise ValueError(f"valid has shape {valid.shape}, expected ({n_sites},) like af")
    real = np.flatnonzero(valid)
    mask = np.zeros(n_sites, dtype=bool)
    if real.size < 2:
        return mask
    rng = mask_rng(seed, epoch, sample, window)
    maf = np.minimum(af[real], 1.0 - af[real])
    if spec.kind == "array":
        mask[real[_array_masked(rng, maf, spec.every, spec.min_maf)]] = True
        return mask
    n_masked = min(max(round(rng.uniform(spec.lo, spec.hi) * real.size), 1), real.size - 1)
    keys = rng.random(real.size)
    if spec.kind == "af":
        keys = np.log(keys) * (maf + AF_SMOOTH)  # Efraimidis-Spirakis log(u) / w: top keys = weighted draw
    mask[real[np.argpartition(-keys, n_masked - 1)[:n_masked]]] = True
    return mask


def _array_masked(rng: np.random.Generator, maf: np.ndarray, every: int, min_maf: float) -> np.ndarray:
    """bool [n] over real sites (n >= 2): every `every`-th site with MAF >= min_maf observed, the rest masked."""
    n = maf.size
    eligible = np.flatnonzero(maf >= min_maf)
    if eligible.size:
        kept = eligible[int(rng.integers(min(every, eligible.size))) :: every]
    else:  # nothing typed on an array here: keep one site so the query is not empty
        kept = rng.integers(n, size=1)
    masked = np.ones(n, dtype=bool)
    masked[kept] = False
    if not masked.any():  # every site kept (every=1, all common): score at least one
        masked[rng.integers(n)] = True
    return masked


def apply_mask(alleles: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """int8 copy of `alleles` [..., n] (0, 1, -1 missing) with -1 where `mask` [n] (or broadcastable) is True.

    The one source of a query: its tokens (`ragprep.windows.pad_window`) and its retrieval key
    (`ragtrain.retrieval`) are both built from this array.
    """
    return np.where(np.asarray(mask, dtype=bool), np.int8(-1), np.asarray(alleles)).astype(np.int8, copy=False)
