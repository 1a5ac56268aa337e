"""int8 embeddings with one fp16 scale per vector (one haplotype at one site)."""

from __future__ import annotations

import numpy as np


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float [..., d] -> (int8 [..., d], float16 scale [...]) with x ~= q * scale; |error| <= scale / 2."""
    x = np.asarray(x, dtype=np.float32)
    target = np.abs(x).max(axis=-1) / 127.0
    scale = target.astype(np.float16)
    # round the fp16 scale up, never down: then |x| / scale <= 127, nothing clips, and the bound holds for
    # small vectors too (fp16 subnormals, or a scale that would underflow to 0)
    scale = np.where(scale.astype(np.float32) < target, np.nextafter(scale, np.float16(np.inf)), scale)
    safe = np.where(scale > 0, scale.astype(np.float32), 1.0)
    q = np.clip(np.rint(x / safe[..., None]), -127, 127).astype(np.int8)
    return q, scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scale.astype(np.float32)[..., None]
