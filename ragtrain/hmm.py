"""Li-Stephens copying model, in torch: at every site, how likely the query copies each reference haplotype.

The query haplotype is a mosaic of reference haplotypes (Li & Stephens 2003), the model behind Beagle, IMPUTE
and Minimac. Hidden state: the haplotype copied. Between consecutive observed sites m and m+1, genetic distance
d (Morgans) gives a switch probability r = 1 - exp(-4 Ne d / H) to a state drawn uniformly from the H allowed
haplotypes; at an observed site the copied allele matches with probability 1 - mismatch. Forward-backward over
the query's observed sites gives the posterior copying probabilities there; at sites in between they are
interpolated linearly in genetic distance (as Minimac and Beagle do).

`copying` runs one pass for a block of queries over one span (a segment of the window plan,
`WindowPlan.segment_windows`, plus its flank), batched over the queries, on any torch device; cost
O(observed sites x states) a query; `ragtrain.data.BatchBuilder` runs it and keeps the last pass.
Every window of the span reads its copying weights and P(ALT) from that pass (`CopyingPass.at`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

HAPLOTYPE_SPACE = 4
"""`WindowCopying.alt_probability` works over all H haplotypes when H <= this x the states a query (measured on 2
CPU cores, B 100, 25 rows, N 512, 256 sites: 7 ms against 30 ms at H 900, 53 ms against 29 ms at H 5,008)."""

SITE_BLOCK = 64
"""`WindowCopying.alt_probability` takes a window's sites this many at a time, each block's product over only the
posterior rows its sites lie between (a window's every row for every site was ~R/2 times the work, R its observed
steps: 23 on an OMNI array's 1000 Genomes split)."""

WEIGHT_BUCKETS = 16
"""Copying probabilities are bucketed as min(15, floor(-log2(w))) for w > 0, and 15 for w = 0."""


@dataclass
class CopyingPass:
    """Posterior copying probabilities of a block of B queries over one span of S sites.

    gamma [M, B, N]: step-major posteriors at each query's M observed steps (padded steps repeat the last one)
    over its N states (`states` [B, N] haplotype ids of the span's panel; `every_haplotype`: every query's
    states are all the span's haplotypes in order). `before` [B, S]: how many of the query's observed sites lie
    at or before each site, less one; `cm` [S] genetic positions, `obs_cm` [B, M] those of the observed steps.
    """

    gamma: torch.Tensor
    states: torch.Tensor
    every_haplotype: bool
    before: torch.Tensor
    seen: torch.Tensor
    counts: torch.Tensor
    cm: torch.Tensor
    obs_cm: torch.Tensor

    def at(self, sites: slice) -> WindowCopying:
        """The copying probabilities at some sites of the span (a window), each interpolated linearly in genetic
        distance between the observed steps left and right of it."""
        before = self.before[:, sites]
        last = (self.counts - 1).clamp(min=0)[:, None]
        left = before.clamp(min=0)
        right = torch.where(self.seen[:, sites], left, torch.minimum(before + 1, last))
        left_cm, right_cm = self.obs_cm.gather(1, left), self.obs_cm.gather(1, right)
        gap = right_cm - left_cm
        t = torch.where(gap > 0, (self.cm[sites][None] - left_cm) / torch.where(gap > 0, gap, 1.0), 0.0)
        t = torch.where(before < 0, 0.0, t.clamp(0.0, 1.0)).to(torch.float32)
        right = torch.where(before < 0, left, right)
        first = int(left.min()) if left.numel() else 0
        stop = int(right.max()) + 1 if right.numel() else 1
        return WindowCopying(self.gamma[first:stop], left - first, right - first, t)  # the steps they lie between


@dataclass
class WindowCopying:
    """A pass read at n chosen sites: site j of query b mixes rows left[b, j] and right[b, j] of `rows`
    [R, B, N] (step-major) with weight t[b, j] on the right one."""

    rows: torch.Tensor
    left: torch.Tensor
    right: torch.Tensor
    t: torch.Tensor

    def _mix(self, at_rows: torch.Tensor) -> torch.Tensor:
        """[B, n, c]: per-row values [R, B, c] interpolated at each chosen site."""
        at_rows = at_rows.transpose(0, 1)
        shape = (*self.left.shape, at_rows.shape[2])
        t = self.t[..., None]
        return ((1 - t) * at_rows.gather(1, self.left[..., None].expand(shape))
                + t * at_rows.gather(1, self.right[..., None].expand(shape)))

    def alt_probability(self, alleles: torch.Tensor, states: torch.Tensor | None) -> torch.Tensor:
        """float32 [B, n]: P(ALT) under the copying model, from the span's alleles [H, n] at the sites and each
        query's states [B, N] (None: every query's states are all H haplotypes in order).

        With few haplotypes beside the states (H <= HAPLOTYPE_SPACE x N) each row's copying probabilities are
        scattered onto the H haplotypes and meet the alleles in matrix products; else each query's states'
        alleles are gathered [B, N, n] (memory-bound: 3x the time of the product at H = 900, N = 512). The
        sites go SITE_BLOCK at a time, each block through the rows its sites lie between only."""
        rows = self.rows
        if states is not None and alleles.shape[0] <= HAPLOTYPE_SPACE * states.shape[1]:
            rows = torch.zeros((*rows.shape[:2], alleles.shape[0]), dtype=rows.dtype, device=rows.device)
            rows.scatter_add_(2, states[None].expand(self.rows.shape[0], -1, -1), self.rows)
            states = None
        elif states is not None:
            rows = rows.transpose(0, 1)  # [B, R, N] beside each query's states' alleles [B, N, block]
        p = torch.empty(self.t.shape, dtype=torch.float32, device=self.t.device)
        for start in range(0, alleles.shape[1], SITE_BLOCK):
            sites = slice(start, start + SITE_BLOCK)
            left, right = self.left[:, sites], self.right[:, sites]
            first, stop = int(left.min()), int(right.max()) + 1
            if states is None:  # [R, B, H] @ [H, block]: one plain product
                at_rows = torch.matmul(rows[first:stop], alleles[:, sites].to(rows.dtype)).transpose(0, 1)
            else:
                at_rows = torch.matmul(rows[:, first:stop], alleles[states][..., sites].to(rows.dtype))
            p_left = at_rows.gather(1, (left - first)[:, None, :]).squeeze(1)  # at_rows [B, R, block]
            p_right = at_rows.gather(1, (right - first)[:, None, :]).squeeze(1)
            t = self.t[:, sites]
            p[:, sites] = ((1 - t) * p_left + t * p_right).clamp(0.0, 1.0)
        return p

    def mass(self) -> torch.Tensor:
        """float32 [B, N]: each state's copying probability summed over the chosen sites."""
        coef = torch.zeros(self.left.shape[0], self.rows.shape[0], dtype=self.rows.dtype, device=self.rows.device)
        coef.scatter_add_(1, self.left, 1 - self.t)
        coef.scatter_add_(1, self.right, self.t)
        return torch.bmm(coef[:, None, :], self.rows.transpose(0, 1)).squeeze(1)

    def most_copied(self, k: int) -> torch.Tensor:
        """int64 [B, k]: the k states (indices into the N) of largest `mass`, larger first, ties by lower index:
        a stable sort's first k, from two top-k's (a tenth of the sort's time at N = 512)."""
        mass = self.mass()
        kth = torch.topk(mass, k, dim=1).values[:, -1:]
        n = mass.shape[1]
        rank = torch.where(mass > kth, 0, torch.where(mass == kth, 1, 2)) * n + torch.arange(n, device=mass.device)
        chosen = torch.topk(rank, k, dim=1, largest=False).indices  # those above the k-th, then its ties, by index
        return chosen.gather(1, torch.sort(mass.gather(1, chosen), dim=1, descending=True, stable=True).indices)

    def weights(self, chosen: torch.Tensor) -> torch.Tensor:
        """float32 [B, k, n]: the copying probability of chosen states [B, k] (indices into the N states) at
        the chosen sites."""
        picked = self.rows.gather(2, chosen[None].expand(self.rows.shape[0], -1, -1))  # [R, B, k]
        return self._mix(picked).transpose(1, 2)


def switch_probabilities(cm: np.ndarray | torch.Tensor, ne: float, n_haplotypes):
    """r = 1 - exp(-4 Ne d / H) between consecutive positions cm [..., M] (centiMorgans): [..., M - 1]; H a
    number, or one a row ([..., 1])."""
    if isinstance(cm, np.ndarray):
        morgans = np.maximum(np.diff(cm, axis=-1), 0.0) / 100.0
        return -np.expm1(-4.0 * ne * morgans / n_haplotypes)
    morgans = torch.diff(cm, dim=-1).clamp(min=0.0) / 100.0
    return -torch.expm1(-4.0 * ne * morgans / n_haplotypes)


EMISSION_BLOCK = 256
"""When every query observes the same sites, emissions come from a table of each step's two rows over the H
haplotypes (query allele REF or ALT), built this many steps at a time."""


def _emissions(alleles: torch.Tensor, obs: torch.Tensor, states: torch.Tensor, query: torch.Tensor,
               mismatch: float) -> Callable[[int], torch.Tensor]:
    """emission(m) -> float32 [B, N], a new tensor: 1 - mismatch where query b's state n carries the query's
    allele at its observed step m, mismatch where not (alleles [H, S], obs [B, M] site indices, states [B, N],
    query [B, M] the alleles observed there). (Match bytes to float32, then scaled: ~20x faster than
    torch.where on the CPU.)

    When every query observes the same sites (impute, validation, `--targets`) each step's two rows over the H
    haplotypes, one for each query allele, are built EMISSION_BLOCK steps at a time, and each query's states
    read from its allele's row: one gather a step. Else each step's carried alleles [B, N] are compared, all
    steps' gathered at once [M, B, N], one gather for each set of queries that observe the same sites."""
    def scaled(match: torch.Tensor) -> torch.Tensor:
        return match.view(torch.uint8).to(torch.float32).mul_(1 - 2 * mismatch).add_(mismatch)

    steps, group = torch.unique(obs, dim=0, return_inverse=True)
    if steps.shape[0] == 1:
        n_hap = alleles.shape[0]
        # [B, M]: where each query's allele's row starts in a step's table (-1, a query with no observed site:
        # every step padding, its emission replaced)
        row = query.clamp(min=0).to(torch.int64) * n_hap
        both = torch.arange(2, dtype=alleles.dtype, device=alleles.device)[:, None]

        @lru_cache(maxsize=1)
        def table(block: int) -> torch.Tensor:
            """[steps, 2 H]: the block's steps' emission rows, query allele REF then ALT."""
            carried = alleles[:, steps[0, block * EMISSION_BLOCK:(block + 1) * EMISSION_BLOCK]].T  # [steps, H]
            return scaled(carried[:, None, :] == both).flatten(1)

        def from_table(m: int) -> torch.Tensor:
            flat = torch.add(states, row[:, m, None])
            return table(m // EMISSION_BLOCK)[m % EMISSION_BLOCK].index_select(0, flat.flatten()).view(states.shape)
        return from_table
    by_site = alleles.T  # [S, H]
    carried = torch.empty((obs.shape[1], *states.shape), dtype=alleles.dtype, device=alleles.device)
    for g in range(steps.shape[0]):
        members = torch.nonzero(group == g).flatten()
        carried[:, members] = by_site[steps[g]][:, states[members]]  # [M, H] -> [M, members, N]
    return lambda m: scaled(carried[m] == query[:, m, None])


@torch.no_grad()
def copying(alleles: torch.Tensor, observed: torch.Tensor, cm: torch.Tensor, states: torch.Tensor,
            allowed: torch.Tensor | None = None, ne: float = 20_000.0, mismatch: float = 1e-3) -> CopyingPass:
    """Forward-backward of each query over its observed sites of one span, in one pass.

    alleles: int8 [H, S] reference alleles of the span; observed: int8 [B, S] query alleles (-1 where hidden or
    missing); cm: float64 [S] genetic positions (centiMorgans); states: int64 [B, N] the haplotypes each query
    may copy (its nearest ones, or all H); allowed: bool [B, N], False for a state the query must never copy
    (its own sample), default all. Every tensor on the device the pass runs on.
    """
    b, n_states = observed.shape[0], states.shape[1]
    device = observed.device
    seen = observed >= 0
    counts = seen.sum(dim=1)
    m_max = max(int(counts.max()) if b else 0, 1)
    # each query's observed site indices, padded by repeating its last one (padded steps change nothing)
    order = torch.argsort((~seen).to(torch.int8), dim=1, stable=True)[:, :m_max]
    step = torch.arange(m_max, device=device)[None, :]
    last = (counts - 1).clamp(min=0)[:, None]
    real = step < counts[:, None]  # [B, M]
    obs = torch.where(real, order, order.gather(1, last))
    if allowed is None:
        allowed = torch.ones((b, n_states), dtype=torch.bool, device=device)
    allowed_f = allowed.to(torch.float32)
    n_allowed = allowed_f.sum(dim=1, keepdim=True).clamp(min=1)  # [B, 1]: each query's own state count
    jump = allowed_f / n_allowed  # [B, N]

    query = observed.gather(1, obs)  # [B, M]
    matched = _emissions(alleles, obs, states, query, mismatch)
    obs_cm = cm[obs]  # [B, M]
    r = switch_probabilities(obs_cm, ne, n_allowed).to(torch.float32)  # [B, M-1]
    r = torch.where(real[:, 1:], r, 0.0)[..., None]  # padded steps do not switch
    stay = 1 - r
    pad = ~real.T[:, :, None]  # [M, B, 1]
    padded = pad.any(dim=1).flatten().tolist()  # steps at which some query is padded
    every = bool(allowed.all())
    if every:  # the jump term is one number a row
        jump = jump[:, :1]

    def emission(m: int) -> torch.Tensor:
        """[B, N] at step m (a new tensor): 1 - mismatch where the state's allele matches, mismatch where not, 0
        for disallowed states, 1 (allowed) at padding."""
        e = matched(m)
        if not every:
            e.mul_(allowed_f)
        return torch.where(pad[m], allowed_f, e) if padded[m] else e

    # in-place steps: each op on [B, N] costs a few microseconds on the CPU, and there are M of each
    gamma = torch.empty((m_max, b, n_states), dtype=torch.float32, device=device)
    a = emission(0).mul_(jump)
    torch.div(a, a.sum(dim=1, keepdim=True), out=gamma[0])
    for m in range(1, m_max):
        a = gamma[m - 1].mul(stay[:, m - 1]).add_(r[:, m - 1] * jump).mul_(emission(m))
        torch.div(a, a.sum(dim=1, keepdim=True), out=gamma[m])
    beta = allowed_f.clone()
    for m in range(m_max - 2, -1, -1):
        a = emission(m + 1).mul_(beta)
        # stay x a + r x jump x sum(a), over its sum (sum(a): jump sums to one): backward values, normalised
        beta = a.mul_(stay[:, m] / a.sum(dim=1, keepdim=True)).add_(r[:, m] * jump)
        post = gamma[m].mul_(beta)
        post.div_(post.sum(dim=1, keepdim=True))
    before = torch.cumsum(seen, dim=1) - 1
    every_haplotype = n_states == alleles.shape[0] and bool(
        (states == torch.arange(n_states, device=device)).all())  # once a pass, not once a window
    return CopyingPass(gamma, states, every_haplotype, before, seen, counts, cm, obs_cm)


def weight_buckets(weights: torch.Tensor) -> torch.Tensor:
    """int64 buckets of copying probabilities: min(15, floor(-log2 w)), 15 for w = 0."""
    level = torch.floor(-torch.log2(weights.clamp(0.0, 1.0)))
    return torch.nan_to_num(level, posinf=WEIGHT_BUCKETS - 1).clamp(max=WEIGHT_BUCKETS - 1).to(torch.int64)
