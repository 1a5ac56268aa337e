"""int8 embeddings with one fp16 scale per vector (one haplotype at one site)."""

from __future__ import annotations

import numpy as np


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float [..., d] -> (int8 [..., d], float16 scale [...]) with x ~= q * scale; |error| <= scale / 2."""
    x = np.asarray(x, dtype=np.float32)
    scale = (np.abs(x).max(axis=-1) / 127.0).astype(np.float16)
    safe = np.where(scale > 0, scale.astype(np.float32), 1.0)
    q = np.clip(np.rint(x / safe[..., None]), -127, 127).astype(np.int8)
    return q, scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scale.astype(np.float32)[..., None]
