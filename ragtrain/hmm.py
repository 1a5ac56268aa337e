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
    """Posterior copying probabilities of a batch of queries at some sites of a span.

    gamma [B, R, N]: rows first .. first + R - 1 of each query's M observed steps (padded steps repeat the last
    one), the rows that the chosen sites interpolate between, over the query's N states (`states` [B, N] panel
    haplotypes, or every haplotype when None). Chosen site j of query b mixes rows left[b, j] and right[b, j] of
    gamma with weight t[b, j] on the right one.
    """

    gamma: np.ndarray
    left: np.ndarray  # int64 [B, n]
    right: np.ndarray  # int64 [B, n]
    t: np.ndarray  # float32 [B, n]
    sites: slice  # the chosen sites, a slice of the span
    first: int  # the first of the M steps that gamma keeps
    steps: int  # M
    states: np.ndarray | None = None  # int64 [B, N]

    def alt_probability(self, alleles: np.ndarray) -> np.ndarray:
        """float32 [B, n]: P(ALT) of each query at the chosen sites under the copying model, from the reference
        alleles of the span int8 [H, S]."""
        window = alleles[:, self.sites].astype(np.float32)
        if self.states is None:
            at_obs = np.einsum("bmh,hs->bms", self.gamma, window, optimize=True)
        else:
            at_obs = np.matmul(self.gamma, window[self.states])  # [B, R, N] @ [B, N, n]
        p_left = np.take_along_axis(at_obs, self.left[:, None, :], axis=1)[:, 0]
        p_right = np.take_along_axis(at_obs, self.right[:, None, :], axis=1)[:, 0]
        return np.clip((1 - self.t) * p_left + self.t * p_right, 0.0, 1.0).astype(np.float32)

    def mass(self) -> np.ndarray:
        """float32 [B, N]: each state's copying probability summed over the chosen sites.

        The sum runs (through BLAS) over all M steps of the span, zero outside the rows kept: BLAS blocks a sum
        by its length, so this keeps the result bit for bit independent of which rows a window keeps.
        """
        b, kept, n = self.gamma.shape
        coef = np.zeros((b, self.steps), dtype=np.float32)
        rows = np.arange(b)[:, None]
        np.add.at(coef, (rows, self.left + self.first), 1 - self.t)
        np.add.at(coef, (rows, self.right + self.first), self.t)
        gamma = np.zeros((b, self.steps, n), dtype=np.float32)
        gamma[:, self.first:self.first + kept] = self.gamma
        return np.einsum("bm,bmh->bh", coef, gamma, optimize=True)

    def weights(self, ids: np.ndarray) -> np.ndarray:
        """float32 [B, k, n]: the copying probability of chosen states ids [B, k] (indices into the N states) at
        the chosen sites."""
        chosen = np.take_along_axis(self.gamma, ids[:, None, :], axis=2)  # [B, R, k]
        w_left = np.take_along_axis(chosen, self.left[:, :, None], axis=1)  # [B, n, k]
        w_right = np.take_along_axis(chosen, self.right[:, :, None], axis=1)
        t = self.t[:, :, None]
        return ((1 - t) * w_left + t * w_right).transpose(0, 2, 1).astype(np.float32)


def switch_probabilities(cm: np.ndarray, ne: float, n_haplotypes: int) -> np.ndarray:
    """r = 1 - exp(-4 Ne d / H) between consecutive positions cm [..., M] (centiMorgans): [..., M - 1]."""
    morgans = np.maximum(np.diff(cm, axis=-1), 0.0) / 100.0
    return -np.expm1(-4.0 * ne * morgans / n_haplotypes)


def copied_alleles(alleles: np.ndarray, obs: np.ndarray, states: np.ndarray | None) -> np.ndarray:
    """int8 [M, B, N], step-major: the allele query b's state n carries at its observed step m (alleles [H, S],
    obs [B, M] site indices, states [B, N] haplotype ids or None for all H). Gathered from the observed columns
    only, one gather for all the queries that observe the same sites."""
    if states is None:
        return alleles[:, obs.T].transpose(1, 2, 0)
    columns, where = np.unique(obs, return_inverse=True)
    by_site = np.ascontiguousarray(alleles[:, columns].T)  # [C, H]
    steps, group = np.unique(where.reshape(obs.shape), axis=0, return_inverse=True)  # queries observing alike
    out = np.empty((obs.shape[1], *states.shape), dtype=alleles.dtype)
    for g, sites in enumerate(steps):
        members = np.flatnonzero(group.reshape(-1) == g)
        out[:, members] = by_site[sites][:, states[members]]  # [M, H] -> [M, members, N]
    return out


def copying(alleles: np.ndarray, observed: np.ndarray, cm: np.ndarray, exclude: np.ndarray | None = None,
            ne: float = 20_000.0, mismatch: float = 1e-3, states: np.ndarray | None = None,
            sites: slice = slice(None)) -> Copying:
    """Forward-backward of each query over its observed sites, for the copying probabilities at `sites`.

    alleles: int8 [H, S] reference alleles of the span; observed: int8 [B, S] query alleles (-1 where hidden or
    missing); cm: float [S] genetic positions (centiMorgans); exclude: int64 [B, m] haplotypes a query must
    never copy (its own sample; negative ids ignored); states: int64 [B, N] the haplotypes each query may copy
    (IMPUTE5-style state selection; None: all H, less `exclude`); sites: the sites of the span wanted (a window
    inside its key span). Every observed site of the span informs the posteriors; the forward pass stops at
    the last step the chosen sites use and the backward pass at the first, so a window in the middle of its
    span costs about one pass over the span, not two.
    """
    b, n_sites = observed.shape
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

    # the chosen sites, each between the observed steps left and right of it (in genetic distance)
    chosen = np.arange(n_sites)[sites]
    before = (np.cumsum(seen, axis=1) - 1)[:, chosen]  # index among observed of the last observed site <= s, or -1
    left = np.clip(before, 0, None)
    right = np.where(seen[:, chosen], left, np.minimum(before + 1, last))
    left_cm = np.take_along_axis(cm[obs], left, axis=1)
    right_cm = np.take_along_axis(cm[obs], right, axis=1)
    gap = right_cm - left_cm
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where((gap > 0) & (before >= 0), (cm[None, chosen] - left_cm) / gap, 0.0)
    t = np.where(before < 0, 0.0, np.clip(t, 0.0, 1.0)).astype(np.float32)
    right = np.where(before < 0, 0, right)
    first, stop = (int(left.min()), int(right.max()) + 1) if left.size else (0, 1)  # the rows of gamma needed

    allowed = np.ones((b, n_hap), dtype=np.float32)
    if exclude is not None and exclude.size and states is None:
        rows, cols = np.nonzero(exclude >= 0)
        allowed[rows, exclude[rows, cols]] = 0.0
    n_allowed = allowed.sum(axis=1, keepdims=True)

    query = np.take_along_axis(observed, obs, axis=1)  # [B, M]
    match = (copied_alleles(alleles, obs, states) == query.T[:, :, None]).view(np.uint8)  # [M, B, N]
    r = switch_probabilities(cm[obs].astype(np.float64), ne, n_hap).astype(np.float32)  # [B, M-1]
    r[~real[:, 1:]] = 0.0
    jump = allowed / n_allowed  # [B, H]
    every_state = bool((allowed == 1).all())
    if every_state:  # the jump term is one number a row
        jump = jump[:, :1]
    levels = np.array([mismatch, 1 - mismatch], dtype=np.float32)  # mismatch, match
    emitted = np.empty((b, n_hap), dtype=np.float32)

    def emission(m: int) -> np.ndarray:
        """float32 [B, N] at step m (one buffer, rewritten each call): 1 - mismatch where the state's allele
        matches, mismatch where not, 0 for disallowed states, `allowed` at padding."""
        np.take(levels, match[m], out=emitted)
        if not every_state:
            np.multiply(emitted, allowed, out=emitted)
        pad = ~real[:, m]
        if pad.any():
            emitted[pad] = allowed[pad]
        return emitted

    # forward up to the last row needed, keeping rows first.. (earlier ones only as the previous step)
    gamma = np.empty((b, stop - first, n_hap), dtype=np.float32)
    scratch = np.empty((b, n_hap), dtype=np.float32)
    a = emission(0) * jump
    previous = gamma[:, 0] if first == 0 else scratch
    np.divide(a, a.sum(axis=1, keepdims=True), out=previous)
    for m in range(1, stop):
        rm = r[:, m - 1, None]
        np.multiply(1 - rm, previous, out=a)
        a += rm * jump
        a *= emission(m)
        previous = gamma[:, m - first] if m >= first else scratch
        np.divide(a, a.sum(axis=1, keepdims=True), out=previous)

    # backward from the last step down to the first row needed; posteriors overwrite the forward rows
    def posterior(m: int, beta: np.ndarray) -> None:
        if first <= m < stop:
            row = gamma[:, m - first]
            row *= beta
            row /= row.sum(axis=1, keepdims=True)

    beta = allowed.copy()
    posterior(m_max - 1, beta)
    for m in range(m_max - 2, first - 1, -1):
        rm = r[:, m, None]
        np.multiply(emission(m + 1), beta, out=a)
        total = a.sum(axis=1, keepdims=True)
        np.multiply(1 - rm, a, out=beta)
        beta += rm * jump * total
        beta /= beta.sum(axis=1, keepdims=True)
        posterior(m, beta)
    return Copying(gamma, (left - first).astype(np.int64), (right - first).astype(np.int64), t, sites, first, m_max,
                   states)


def weight_buckets(weights: np.ndarray) -> np.ndarray:
    """int64 buckets of copying probabilities: min(15, floor(-log2 w)), 15 for w = 0."""
    with np.errstate(divide="ignore"):
        level = np.floor(-np.log2(np.clip(weights, 0.0, 1.0)))
    return np.minimum(np.nan_to_num(level, posinf=WEIGHT_BUCKETS - 1), WEIGHT_BUCKETS - 1).astype(np.int64)
