"""Model inputs of one window: alleles and AF padded to the plan's window length (`stores.plan.WindowPlan`)."""

from __future__ import annotations

import numpy as np

from ragprep.model import MASK, PAD


def pad_window(alleles: np.ndarray, af: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One window's alleles [H, n] (0, 1, -1 missing/masked) and AF [n] -> model inputs padded to `length`:
    tokens int64 [H, length] (REF 0, ALT 1, MASK 2, PAD 3), af float32 [length], valid bool [length]."""
    h, n = alleles.shape
    tokens = np.full((h, length), PAD, dtype=np.int64)
    tokens[:, :n] = np.where(alleles < 0, MASK, alleles)
    af_padded = np.zeros(length, dtype=np.float32)
    af_padded[:n] = af
    return tokens, af_padded, np.arange(length) < n
