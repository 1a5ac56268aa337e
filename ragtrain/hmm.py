"""Li-Stephens copying model: at every site, how likely the query copies each reference haplotype.

The query haplotype is a mosaic of reference haplotypes (Li & Stephens 2003), the model behind Beagle, IMPUTE
and Minimac. Hidden state: the haplotype copied. Between consecutive observed sites m and m+1, genetic distance
d (Morgans) gives a switch probability r = 1 - exp(-4 Ne d / H) to a state drawn uniformly from the H allowed
haplotypes; at an observed site the copied allele matches with probability 1 - mismatch. Forward-backward over
the query's observed sites gives the posterior copying probabilities there; at sites in between they are
interpolated linearly in genetic distance (as Minimac and Beagle do). Everything is vectorised over a batch of
queries, each with its own observed sites; cost O(observed sites x H) a query.

Used three ways (`ragtrain.data`): to pick the k neighbours a query copies most inside a window (they follow
the query along it, unlike one Hamming ranking for the whole window), to give the model each neighbour's
copying probability at each site, and to give it the copying model's own ALT probability at each site.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WEIGHT_BUCKETS = 16
"""Copying probabilities are bucketed as min(15, floor(-log2(w))) for w > 0, and 15 for w = 0."""


@dataclass
class Copying:
    """Posterior copying probabilities of a batch of queries over one span of sites.

    gamma [B, M, N] at each query's observed sites (padded steps repeat the last one), over the query's N states
    (`states` [B, N] panel haplotypes, or every haplotype when None); the interpolation of a site s: rows
    left[b, s] and right[b, s] of gamma, mixed with weight t[b, s] on the right one.
    """

    gamma: np.ndarray
    left: np.ndarray  # int64 [B, S]
    right: np.ndarray  # int64 [B, S]
    t: np.ndarray  # float32 [B, S]
    states: np.ndarray | None = None  # int64 [B, N]

    def alt_probability(self, alleles: np.ndarray, sites: slice) -> np.ndarray:
        """float32 [B, n]: P(ALT) of each query at `sites` (a slice of the span) under the copying model, from
        the reference alleles of the span int8 [H, S]."""
        left, right, t = self.left[:, sites], self.right[:, sites], self.t[:, sites]
        lo, hi = int(left.min(initial=0)), int(right.max(initial=0)) + 1  # only the rows these sites use
        window = alleles[:, sites].astype(np.float32)
        if self.states is None:
            at_obs = np.einsum("bmh,hs->bms", self.gamma[:, lo:hi], window, optimize=True)
        else:
            at_obs = np.matmul(self.gamma[:, lo:hi], window[self.states])  # [B, m, N] @ [B, N, n]
        p_left = np.take_along_axis(at_obs, left[:, None, :] - lo, axis=1)[:, 0]
        p_right = np.take_along_axis(at_obs, right[:, None, :] - lo, axis=1)[:, 0]
        return np.clip((1 - t) * p_left + t * p_right, 0.0, 1.0).astype(np.float32)

    def mass(self, sites: slice) -> np.ndarray:
        """float32 [B, N]: each state's copying probability summed over `sites`."""
        left, right, t = self.left[:, sites], self.right[:, sites], self.t[:, sites]
        coef = np.zeros(self.gamma.shape[:2], dtype=np.float32)
        rows = np.arange(coef.shape[0])[:, None]
        np.add.at(coef, (rows, left), 1 - t)
        np.add.at(coef, (rows, right), t)
        return np.einsum("bm,bmh->bh", coef, self.gamma, optimize=True)

    def weights(self, ids: np.ndarray, sites: slice) -> np.ndarray:
        """float32 [B, k, n]: the copying probability of chosen states ids [B, k] (indices into the N states) at
        `sites`."""
        chosen = np.take_along_axis(self.gamma, ids[:, None, :], axis=2)  # [B, M, k]
        left, right, t = self.left[:, sites], self.right[:, sites], self.t[:, sites]
        w_left = np.take_along_axis(chosen, left[:, :, None], axis=1)  # [B, n, k]
        w_right = np.take_along_axis(chosen, right[:, :, None], axis=1)
        return ((1 - t)[:, :, None] * w_left + t[:, :, None] * w_right).transpose(0, 2, 1).astype(np.float32)


def switch_probabilities(cm: np.ndarray, ne: float, n_haplotypes: int) -> np.ndarray:
    """r = 1 - exp(-4 Ne d / H) between consecutive positions cm [..., M] (centiMorgans): [..., M - 1]."""
    morgans = np.maximum(np.diff(cm, axis=-1), 0.0) / 100.0
    return -np.expm1(-4.0 * ne * morgans / n_haplotypes)


def copying(alleles: np.ndarray, observed: np.ndarray, cm: np.ndarray, exclude: np.ndarray | None = None,
            ne: float = 20_000.0, mismatch: float = 1e-3, states: np.ndarray | None = None) -> Copying:
    """Forward-backward of each query over its observed sites.

    alleles: int8 [H, S] reference alleles of the span; observed: int8 [B, S] query alleles (-1 where hidden or
    missing); cm: float [S] genetic positions (centiMorgans); exclude: int64 [B, m] haplotypes a query must
    never copy (its own sample; negative ids ignored); states: int64 [B, N] the haplotypes each query may copy
    (IMPUTE5-style state selection; None: all H, less `exclude`).
    """
    b = observed.shape[0]
    n_hap = alleles.shape[0] if states is None else states.shape[1]
    seen = observed >= 0
    counts = seen.sum(axis=1)
    m_max = max(int(counts.max(initial=0)), 1)
    # each query's observed site indices, padded by repeating its last one (padded steps change nothing)
    order = np.argsort(~seen, axis=1, kind="stable")[:, :m_max]
    step = np.arange(m_max)[None, :]
    last = np.maximum(counts - 1, 0)[:, None]
    obs = np.where(step < counts[:, None], order, np.take_along_axis(order, last, axis=1))
    real = step < counts[:, None]  # [B, M]

    allowed = np.ones((b, n_hap), dtype=np.float32)
    if exclude is not None and exclude.size and states is None:
        rows, cols = np.nonzero(exclude >= 0)
        allowed[rows, exclude[rows, cols]] = 0.0
    n_allowed = allowed.sum(axis=1, keepdims=True)

    query = np.take_along_axis(observed, obs, axis=1)  # [B, M]
    if states is None:
        copied = alleles[:, obs].transpose(1, 2, 0)  # [B, M, H]
    else:
        copied = alleles[states[:, None, :], obs[:, :, None]]  # [B, M, N]
    emission = np.where(copied == query[:, :, None], np.float32(1 - mismatch), np.float32(mismatch))
    emission *= allowed[:, None, :]
    emission[~real] = allowed[np.nonzero(~real)[0]]  # no query (or padding): no evidence
    r = switch_probabilities(cm[obs].astype(np.float64), ne, n_hap).astype(np.float32)  # [B, M-1]
    r[~real[:, 1:]] = 0.0
    jump = allowed / n_allowed  # [B, H]

    alpha = np.empty((b, m_max, n_hap), dtype=np.float32)
    a = emission[:, 0] * jump
    alpha[:, 0] = a / a.sum(axis=1, keepdims=True)
    for m in range(1, m_max):
        rm = r[:, m - 1, None]
        a = emission[:, m] * ((1 - rm) * alpha[:, m - 1] + rm * jump)
        alpha[:, m] = a / a.sum(axis=1, keepdims=True)
    gamma = alpha  # posteriors overwrite the forward pass in place
    beta = allowed.copy()
    gamma[:, -1] *= beta
    for m in range(m_max - 2, -1, -1):
        rm = r[:, m, None]
        t_ = emission[:, m + 1] * beta
        beta = (1 - rm) * t_ + rm * jump * t_.sum(axis=1, keepdims=True)
        beta /= beta.sum(axis=1, keepdims=True)
        gamma[:, m] *= beta
    gamma /= gamma.sum(axis=2, keepdims=True)

    # interpolation of every site of the span between the observed sites around it
    before = np.cumsum(seen, axis=1) - 1  # index among observed of the last observed site <= s, or -1
    left = np.clip(before, 0, None)
    right = np.where(seen, left, np.minimum(before + 1, last))
    left_cm = np.take_along_axis(cm[obs], left, axis=1)
    right_cm = np.take_along_axis(cm[obs], right, axis=1)
    gap = right_cm - left_cm
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where((gap > 0) & (before >= 0), (cm[None, :] - left_cm) / gap, 0.0)
    t = np.where(before < 0, 0.0, np.clip(t, 0.0, 1.0)).astype(np.float32)
    right = np.where(before < 0, 0, right)
    return Copying(gamma, left.astype(np.int64), right.astype(np.int64), t, states)


def weight_buckets(weights: np.ndarray) -> np.ndarray:
    """int64 buckets of copying probabilities: min(15, floor(-log2 w)), 15 for w = 0."""
    with np.errstate(divide="ignore"):
        level = np.floor(-np.log2(np.clip(weights, 0.0, 1.0)))
    return np.minimum(np.nan_to_num(level, posinf=WEIGHT_BUCKETS - 1), WEIGHT_BUCKETS - 1).astype(np.int64)
