"""Exact top-k retrieval of reference haplotypes by Hamming distance over a query's observed sites.

Alleles are encoded +-1 (REF 0 -> -1, ALT 1 -> +1) and a masked or missing site (-1) -> 0. Then
q . r = agreements - disagreements over the query's observed sites = n_observed - 2 * Hamming distance, so
the largest inner products are exactly the smallest masked Hamming distances. Scores
are small integers, exact in float32 (and in TF32/bf16 inputs with fp32 accumulation).

Backends: FAISS IndexFlatIP (GpuIndexFlatIP on a CUDA device when faiss has GPUs) or an exact torch path
(q @ R.T and topk, any device). FAISS is optional: `pip install .[cpu]` (faiss-cpu) or `pip install .[gpu]`
(faiss-gpu-cu12) installs it; without it "auto" uses torch.

Results are deterministic and identical across backends: higher score first, ties broken by lower haplotype
id. FAISS orders ties arbitrarily, so a query whose k-th score ties with the last FAISS candidate (a tie that
may continue outside the candidates) is re-ranked exactly over all haplotypes by the torch path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch

from stores.errors import UserError

Backend = Literal["auto", "faiss", "torch"]
Selection = Literal["copying", "hamming"]


@dataclass(frozen=True)
class RetrievalSpec:
    """How neighbours are found and described: saved in every checkpoint, so impute retrieves as fit did.

    k: neighbours a query window; segment: sites of windows grouped into one segment, over which the copying
    model runs once per query (`WindowPlan.segment_windows`; 0: one window a segment); flank: sites each side
    of a segment whose observed alleles also inform retrieval and the copying model (an array types ~1 % of
    sites: a few a window, too few to match on); selection: "copying"
    (the k haplotypes the Li-Stephens copying model says the query copies most inside the window, with the
    model's per-site copying probabilities and ALT probability given to the network; `ragtrain.hmm`) or
    "hamming" (the k nearest by Hamming distance over the observed sites of the whole span); states: the copying
    model's states, each query's nearest haplotypes by Hamming distance over the span (0: every haplotype),
    joined by local_states: its nearest over each window-length block of the span and local_flank observed
    sites each side (haplotypes that match well somewhere; IMPUTE5 and Beagle choose states by local matches
    too), at most 2 x states in all; ne, mismatch: the copying model's effective population size and allele
    mismatch probability; match_features: give the model
    each neighbour's match length around each site (`match_buckets`); backend: FAISS or torch for Hamming
    search, which return identical neighbours (so it may differ between fit and impute).
    """

    k: int = 8
    flank: int = 8192
    segment: int = 16_384
    selection: Selection = "copying"
    states: int = 256
    local_states: int = 16
    local_flank: int = 32
    ne: float = 20_000.0
    mismatch: float = 1e-3
    match_features: bool = False  # with the copying model they added nothing (docs/accuracy.md)
    backend: Backend = "auto"

    def __post_init__(self) -> None:
        if not self.ne > 0:
            raise UserError("--ne", f"{self.ne} is not a positive number", "give an effective population size, e.g. 20000")
        if not 0 < self.mismatch < 0.5:
            raise UserError("--mismatch", f"{self.mismatch} is outside (0, 0.5)", "give a small probability, e.g. 0.001")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RetrievalSpec:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def differences(self, other: RetrievalSpec) -> list[str]:
        """Settings that change which neighbours are found or what the model sees (not the backend)."""
        names = ("k", "flank", "segment", "selection", "states", "local_states", "local_flank", "ne", "mismatch", "match_features")
        return [f"{name} {getattr(self, name)} vs {getattr(other, name)}" for name in names
                if getattr(self, name) != getattr(other, name)]

FAISS_GPU_MAX_K = 2048  # GpuIndexFlat selects at most this many neighbours; larger searches use torch
_CHUNK_ELEMENTS = 1 << 25  # torch path: at most this many query x haplotype scores at once


def encode_pm1(alleles: np.ndarray) -> np.ndarray:
    """Alleles (0, 1, -1 masked/missing) -> float32 +-1 vectors: 0 -> -1, 1 -> +1, -1 -> 0."""
    a = np.asarray(alleles)
    return np.where(a == 1, 1.0, np.where(a == 0, -1.0, 0.0)).astype(np.float32)


def own_haplotypes(samples: np.ndarray, ploidy: int = 2) -> np.ndarray:
    """int64 [len(samples), ploidy]: the panel haplotype ids of each sample (sample * ploidy + phase, the
    store's haplotype order): pass as `exclude` when the queries come from the panel itself."""
    samples = np.asarray(samples, dtype=np.int64)
    return samples[:, None] * ploidy + np.arange(ploidy, dtype=np.int64)


def _import_faiss():
    import faiss  # optional: pip install .[cpu] or .[gpu]

    return faiss


def _faiss_gpus(faiss) -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


class WindowIndex:
    """An exact inner-product index over one window's reference haplotypes int8 [H, n].

    backend: "auto" (FAISS when importable: on GPU for a CUDA device when faiss has GPUs; a CUDA device with
    CPU-only faiss uses torch on that device; no faiss: torch), "faiss" or "torch". `self.backend` says which
    one was picked: "faiss-cpu", "faiss-gpu" or "torch".
    """

    def __init__(self, ref_alleles: np.ndarray, backend: Backend = "auto", device: str | torch.device = "cpu"):
        ref_alleles = np.asarray(ref_alleles)
        if ref_alleles.ndim != 2:
            raise ValueError(f"reference alleles must be [haplotypes, sites], got shape {ref_alleles.shape}")
        self.n_haplotypes, self.n_sites = ref_alleles.shape
        self.device = torch.device(device)
        self._ref = np.ascontiguousarray(encode_pm1(ref_alleles))
        self._ref_torch: torch.Tensor | None = None
        self._index = None
        self.backend = self._resolve(backend)
        if self.backend == "torch":
            self._ref_torch = torch.from_numpy(self._ref).to(self.device)
        else:
            self._index = self._build_faiss()

    def _resolve(self, backend: str) -> str:
        if backend not in ("auto", "faiss", "torch"):
            raise ValueError(f"retrieval backend must be auto, faiss or torch, got {backend!r}")
        if backend == "torch":
            return "torch"
        try:
            faiss = _import_faiss()
        except ImportError:
            if backend == "faiss":
                raise UserError("--retrieval", "faiss is asked for but not installed",
                                "`pip install faiss-cpu` (the project's [cpu] extra; [gpu] on CUDA), "
                                "or use --retrieval torch (same results)") from None
            return "torch"
        if self.device.type == "cuda":
            if _faiss_gpus(faiss) > 0:
                return "faiss-gpu"
            if backend == "auto":
                return "torch"
        return "faiss-cpu"

    def _build_faiss(self):
        faiss = _import_faiss()
        if self.backend == "faiss-gpu":
            self._gpu_resources = faiss.StandardGpuResources()
            config = faiss.GpuIndexFlatConfig()
            config.device = self.device.index or 0
            index = faiss.GpuIndexFlatIP(self._gpu_resources, self.n_sites, config)
        else:
            index = faiss.IndexFlatIP(self.n_sites)
        index.add(self._ref)
        return index

    def search(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k reference haplotypes of each query int8 [Q, n] (0, 1, -1 = masked/missing).

        exclude: int64 [Q, m] haplotype ids each query must never retrieve (its own sample's haplotypes;
        negative ids are ignored). Returns ids int64 [Q, k] and scores float32 [Q, k] (agreements minus
        disagreements over observed sites), best first, ties by lower id.
        """
        queries = np.asarray(queries)
        if queries.ndim != 2 or queries.shape[1] != self.n_sites:
            raise ValueError(f"queries must be [Q, {self.n_sites}] (the index's sites), got shape {queries.shape}")
        n_queries = queries.shape[0]
        if exclude is not None:
            exclude = np.asarray(exclude, dtype=np.int64)
            if exclude.ndim == 1:
                exclude = exclude[:, None]
            if exclude.shape[0] != n_queries:
                raise ValueError(f"exclude must have one row per query ({n_queries}), got shape {exclude.shape}")
            if exclude.size and exclude.max() >= self.n_haplotypes:
                raise ValueError(f"exclude holds haplotype id {exclude.max()}, the index has {self.n_haplotypes}")
        m = 0 if exclude is None else exclude.shape[1]
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if self.n_haplotypes - m < k:
            raise UserError("--k", f"cannot retrieve k={k} neighbours from {self.n_haplotypes} reference "
                            f"haplotypes when {m} are excluded per query", f"lower --k to at most {self.n_haplotypes - m}")
        if n_queries == 0:
            return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
        encoded = np.ascontiguousarray(encode_pm1(queries))
        if self.backend == "torch" or (self.backend == "faiss-gpu" and k + m > FAISS_GPU_MAX_K):
            return self._exact(encoded, k, exclude)
        return self._search_faiss(encoded, k, exclude)

    def _search_faiss(self, encoded: np.ndarray, k: int, exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        n_candidates = min(self.n_haplotypes, k + (0 if exclude is None else exclude.shape[1]))
        scores, ids = self._index.search(encoded, n_candidates)
        ids = ids.astype(np.int64)
        banned = np.zeros(ids.shape, dtype=bool) if exclude is None else (ids[:, :, None] == exclude[:, None, :]).any(-1)
        order = np.lexsort((ids, -scores, banned), axis=-1)[:, :k]  # allowed first, then score desc, id asc
        top_ids = np.take_along_axis(ids, order, axis=1)
        top_scores = np.take_along_axis(scores, order, axis=1)
        # A tie at the k-th score that reaches the last candidate may go on outside them: re-rank exactly.
        ambiguous = np.flatnonzero(scores.min(axis=1) > top_scores[:, -1] - 0.5)
        if n_candidates < self.n_haplotypes and ambiguous.size:
            fixed_ids, fixed_scores = self._exact(encoded[ambiguous], k, None if exclude is None else exclude[ambiguous])
            top_ids[ambiguous], top_scores[ambiguous] = fixed_ids, fixed_scores
        return top_ids, np.round(top_scores).astype(np.float32)

    @torch.no_grad()
    def _exact(self, encoded: np.ndarray, k: int, exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over all haplotypes with torch (`_ranking_keys`: higher score, then lower id)."""
        if self._ref_torch is None:
            self._ref_torch = torch.from_numpy(self._ref).to(self.device)
        ref, n_hap = self._ref_torch, self.n_haplotypes
        chunk = max(1, _CHUNK_ELEMENTS // n_hap)
        out_ids, out_scores = [], []
        with torch.autocast(ref.device.type, enabled=False):  # bf16 outputs would round scores above 256
            for start in range(0, encoded.shape[0], chunk):
                q = torch.from_numpy(encoded[start : start + chunk]).to(ref.device)
                scores = torch.round(q @ ref.T).to(torch.int64)
                part = None if exclude is None else exclude[start : start + chunk]
                top = _ranking_keys(scores, part).topk(k, dim=1).indices
                out_ids.append(top.cpu())
                out_scores.append(scores.gather(1, top).cpu())
        return torch.cat(out_ids).numpy(), torch.cat(out_scores).numpy().astype(np.float32)


def _ranking_keys(scores: torch.Tensor, exclude: np.ndarray | None) -> torch.Tensor:
    """int64 keys of scores [..., Q, H] whose top-k is the exact ranking: score * H + (H - 1 - id) are unique, so
    topk's order is total and deterministic (higher score, then lower id); excluded ids [Q, m] (negative:
    ignored) rank last."""
    n_hap = scores.shape[-1]
    keys = scores * n_hap + ((n_hap - 1) - torch.arange(n_hap, device=scores.device))
    if exclude is not None and exclude.size:
        ex = torch.from_numpy(np.where(exclude >= 0, exclude, n_hap)).to(scores.device)  # ignored: a dummy column
        banned = torch.zeros((ex.shape[0], n_hap + 1), dtype=torch.bool, device=scores.device).scatter_(1, ex, True)
        keys.masked_fill_(banned[:, :n_hap], torch.iinfo(torch.int64).min)
    return keys


@torch.no_grad()
def local_nearest(ref_alleles: np.ndarray, queries: np.ndarray, k: int, block: int, flank: int,
                  exclude: np.ndarray | None = None, max_scores: int = _CHUNK_ELEMENTS) -> np.ndarray:
    """int64 [Q, blocks x k]: for every block of `block` sites of a span, each query's k nearest reference
    haplotypes by Hamming distance over its observed sites in the block and `flank` observed sites each side
    (ref_alleles [H, S], queries [Q, S] with -1 where hidden). Exact, ties by lower id, `exclude` [Q, m] never
    returned, as `WindowIndex.search`. One small product a block (its observed columns, a few dozen on an
    array), at most `max_scores` scores at once: a block's scores stay in cache, where prefix sums of every
    block at once were memory-bound (1.77 -> 0.16 s on `make compare`'s split, the same states)."""
    n_hap, n_sites = ref_alleles.shape
    seen = np.flatnonzero((np.asarray(queries) >= 0).any(axis=0))
    if seen.size == 0 or k < 1:
        return np.zeros((queries.shape[0], 0), dtype=np.int64)
    starts = np.arange(0, n_sites, block)
    lo = np.maximum(np.searchsorted(seen, starts) - flank, 0)
    hi = np.minimum(np.searchsorted(seen, starts + block) + flank, seen.size)
    ref = torch.from_numpy(encode_pm1(ref_alleles[:, seen]))  # [H, C]
    query = torch.from_numpy(encode_pm1(queries[:, seen]))  # [Q, C]
    found = torch.empty((query.shape[0], starts.size, k), dtype=torch.int64)
    rows = max(1, max_scores // n_hap)
    for first in range(0, query.shape[0], rows):
        q = query[first:first + rows]
        part = None if exclude is None else exclude[first:first + rows]
        for j, (a, b) in enumerate(zip(lo.tolist(), hi.tolist())):
            scores = torch.round(q[:, a:b] @ ref[:, a:b].T).to(torch.int64)  # [q, H]
            found[first:first + rows, j] = _ranking_keys(scores, part).topk(k, dim=1).indices
    return found.reshape(query.shape[0], -1).numpy()


def retrieve(ref_alleles: np.ndarray, queries: np.ndarray, k: int, exclude: np.ndarray | None = None,
             backend: Backend = "auto", device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Build a `WindowIndex` over `ref_alleles` [H, n] and search `queries` [Q, n]: (ids [Q, k], scores [Q, k])."""
    return WindowIndex(ref_alleles, backend=backend, device=device).search(queries, k, exclude)


MATCH_BUCKETS = 16
"""Match lengths are bucketed as floor(log2(1 + n)), capped: n = 0, 1, 2-3, 4-7, ..., >= 2**14."""


def match_buckets(observed: np.ndarray, neighbours: np.ndarray, within: slice = slice(None)) -> np.ndarray:
    """int64 [B, k, sites in `within`]: at each site, how far the neighbour matches the query around it, bucketed.

    observed: int8 [B, S] query alleles (-1 where hidden or missing); neighbours: [B, k, S] their alleles;
    within: the sites to report (the whole span is still searched for mismatches).
    At site s, n = the query's observed sites strictly between the nearest mismatch at or left of s and the
    nearest at or right of s (0 where they disagree at s; the span's edges bound it). A long shared segment
    around a site (identity by descent) is what makes a neighbour worth copying there; the memory alone does
    not say how well a neighbour matched the query outside the window.
    """
    b, k, s = neighbours.shape
    seen = observed >= 0
    mismatch = seen[:, None, :] & (neighbours >= 0) & (neighbours != observed[:, None, :])
    index = np.arange(s)
    left = np.maximum.accumulate(np.where(mismatch, index, -1), axis=-1)  # last mismatch <= s, or -1
    right = np.minimum.accumulate(np.where(mismatch, index, s)[..., ::-1], axis=-1)[..., ::-1]  # first >= s, or S
    seen_before = np.zeros((b, s + 1), dtype=np.int64)
    np.cumsum(seen, axis=-1, out=seen_before[:, 1:])  # observed sites in [0, i)
    seen_before = np.broadcast_to(seen_before[:, None], (b, k, s + 1))
    count = (np.take_along_axis(seen_before, right[..., within], axis=-1)
             - np.take_along_axis(seen_before, left[..., within] + 1, axis=-1))
    return np.minimum(np.floor(np.log2(1 + np.maximum(count, 0))), MATCH_BUCKETS - 1).astype(np.int64)
