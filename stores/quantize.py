"""int8 embeddings with fp16 scales: one a vector (one haplotype at one site; format 1 stores), or one a site
of a window shared by its haplotypes (format 2: the vectors' maxima at a site differ by ~13 % on real panels,
and per-vector scales were 14 % of a store's bytes)."""

from __future__ import annotations

import numpy as np


def quantize_int8(x: np.ndarray, shared: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """float [..., d] -> (int8 [..., d], float16 scale) with x ~= q * scale; |error| <= scale / 2. One scale a
    vector ([...]), or one shared over the leading axes `shared` too (those axes dropped from its shape)."""
    x = np.asarray(x, dtype=np.float32)
    target = np.abs(x).max(axis=-1)
    if shared:
        target = target.max(axis=shared, keepdims=True)
    target = target / 127.0
    scale = target.astype(np.float16)
    # round the fp16 scale up, never down: then |x| / scale <= 127, nothing clips, and the bound holds for
    # small vectors too (fp16 subnormals, or a scale that would underflow to 0)
    scale = np.where(scale.astype(np.float32) < target, np.nextafter(scale, np.float16(np.inf)), scale)
    safe = np.where(scale > 0, scale.astype(np.float32), 1.0)
    q = np.clip(np.rint(x / safe[..., None]), -127, 127).astype(np.int8)
    return q, scale.squeeze(axis=shared) if shared else scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """q [..., d] times its scales (broadcast to q's leading axes)."""
    return q.astype(np.float32) * scale.astype(np.float32)[..., None]
