"""Phase unphased target genotypes with the copying model, before imputation (as Beagle phases and imputes in one
run). Two stages, each a Li-Stephens model over the panel at the target's typed sites:

1. A diploid pair model. A sample's two haplotypes each copy a panel haplotype: the hidden state is the pair
   (c, d), c among the first haplotype's K states and d among the second's; each haplotype switches
   independently between typed sites (probability r from the genetic distance, as in `ragtrain.hmm`), and the
   pair emits the genotype: a phased call or a homozygote in its order, an unphased heterozygote in either
   order, a missing call anything. Forward-backward gives, at each unphased heterozygote, the probability that
   its orientation is the same as at the sample's previous one; the more probable is taken (which minimises
   expected switch errors). States: the same K for both haplotypes, those with the fewest opposite homozygotes
   to the genotype (a later round: each haplotype's K nearest in the phase so far).
2. Haploid sweeps. Both haplotypes copy the same `sweep_states` states, near either haplotype of the phase so
   far; along the sites (left to right, then right to left, alternately) each unphased heterozygote keeps the
   phase, switches it from there on, or swaps alone, whichever is more probable for the two haplotypes
   together given the phase decided behind and the phase so far ahead.

States are chosen afresh every `step` typed sites, ranked over the `context` sites around (a haplotype in both
sets keeps its probability, a new one is entered by a switch). Phased calls anchor the rest, so partly phased
samples keep their phase; a sample also in the panel never copies its own haplotypes. Long contigs are phased
in overlapping chunks of typed sites, joined where they overlap (each sample's orientation that agrees at more
heterozygotes). Cost a sample: O(typed sites x K^2) for the pair model, O(typed sites x sweep states) a sweep,
batched over samples on any torch device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ragprep.progress import progress_bar
from ragtrain.hmm import switch_probabilities
from ragtrain.targets import Targets
from stores import EmbeddingStore

MISSING = -1


@dataclass(frozen=True)
class PhasingOptions:
    states: int = 64  # panel haplotypes each haplotype copies from at a time (K; K^2 pair states)
    step: int = 32  # typed sites between state choices
    context: int = 256  # typed sites (centred on a step) over which states are ranked
    rounds: int = 1  # rounds of the pair model (states: by opposite homozygotes, then by the phase so far)
    sweeps: int = 6  # haploid sweeps after each round of the pair model
    sweep_states: int = 256  # states of the haploid sweeps (shared by both haplotypes)
    ne: float = 100_000.0
    mismatch: float = 1e-4
    chunk: int = 4096  # typed sites phased at once (memory: the backward values, chunk x samples x K^2 bfloat16)
    overlap: int = 256  # typed sites shared by consecutive chunks, where they are joined
    memory: int = 2**29  # bytes of backward values a pass: sets the samples phased together


PANEL_READ_SITES = 8192
"""Panel sites read from the store at a time while gathering its alleles at the typed sites."""


def phase_targets(targets: Targets, store: EmbeddingStore, device: torch.device, seed: int = 1,
                  options: PhasingOptions = PhasingOptions(), show_progress: bool = True) -> int:
    """Phase the targets' unphased heterozygous calls in place (`targets.alleles` at the typed sites) against
    the store's panel; returns how many samples had any. Memory: the panel at the typed sites only."""
    if not targets.unphased_samples:
        return 0
    rows = np.flatnonzero(targets.typed)
    panel = np.empty((store.n_haplotypes, rows.size), dtype=np.int8)
    for start in range(0, store.positions.size, PANEL_READ_SITES):
        span = slice(start, min(start + PANEL_READ_SITES, store.positions.size))
        inside = (rows >= span.start) & (rows < span.stop)
        if inside.any():
            panel[:, inside] = store.alleles(span)[:, rows[inside] - span.start]
    calls = targets.alleles[rows].reshape(rows.size, -1, 2)
    with progress_bar(disable=not show_progress) as bar:
        task = bar.add_task(f"phase {targets.unphased_samples} samples", total=None)
        panel_index = {sample: i for i, sample in enumerate(store.sample_ids)}
        owner = np.array([panel_index.get(sample, -1) for sample in targets.sample_ids])
        phased = phase(calls, targets.unphased, panel, store.genetic_positions()[rows], options, seed, device,
                       owner=owner, on_pass=lambda done, total: bar.update(task, completed=done, total=total))
    calls = np.where(targets.unphased[..., None], phased, calls)
    targets.alleles[rows] = calls.reshape(rows.size, -1)
    samples = targets.unphased_samples
    targets.unphased = np.zeros_like(targets.unphased)
    return samples


def phase(genotypes: np.ndarray, unphased: np.ndarray, panel: np.ndarray, cm: np.ndarray,
          options: PhasingOptions = PhasingOptions(), seed: int = 1, device: torch.device | str = "cpu",
          owner: np.ndarray | None = None, on_pass: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Phased alleles int8 [T, N, 2] of N samples at T typed sites.

    genotypes: int8 [T, N, 2] the calls (0 REF, 1 ALT, -1 missing; a call with one missing allele is missing);
    unphased: bool [T, N] heterozygous calls without phase; panel: int8 [H, T] the panel's alleles at those
    sites; cm: float64 [T] their genetic positions; owner: int [N] each sample's index in the panel when it is
    there too (its own two haplotypes are never its states, as in imputation), else -1. Phased and homozygous
    calls come back as given, missing ones as -1. `on_pass(done, total)` reports progress after each pass.
    """
    genotypes = np.asarray(genotypes, dtype=np.int8).copy()
    genotypes[(genotypes == MISSING).any(axis=2)] = MISSING
    unphased = np.asarray(unphased, dtype=bool) & (genotypes[..., 0] != genotypes[..., 1]) & (genotypes[..., 0] >= 0)
    result = genotypes.copy()
    todo = np.flatnonzero(unphased.any(axis=0))
    if todo.size == 0:
        return result
    device = torch.device(device)
    panel_t = torch.as_tensor(np.ascontiguousarray(panel), device=device)
    cm_t = torch.as_tensor(np.asarray(cm, dtype=np.float64), device=device)
    generator = torch.Generator().manual_seed(seed)
    tiebreak = (torch.rand(panel.shape[0], generator=generator, dtype=torch.float64) * 0.5).to(device)
    own = np.full(todo.size, -1) if owner is None else np.asarray(owner)[todo]

    def penalty(block: slice) -> torch.Tensor:
        """[B, H] added to a block's distances: the seeded tie-break, +inf at a sample's own panel haplotypes."""
        added = tiebreak.expand(len(own[block]), -1).clone()
        for i in np.flatnonzero(own[block] >= 0):
            added[i, 2 * own[block][i]:2 * own[block][i] + 2] = float("inf")
        return added

    chunks = segments(genotypes.shape[0], options.chunk, options.overlap)
    longest = max(sites.stop - sites.start for sites in chunks)
    pair_block = max(1, options.memory // (2 * options.states ** 2 * longest))  # bfloat16 backward values
    sweep_block = max(1, options.memory // (4 * 2 * options.sweep_states * longest))
    passes, done = len(chunks) * options.rounds * (1 + options.sweeps), 0
    pieces = []
    for sites in chunks:
        calls = torch.as_tensor(genotypes[sites][:, todo], device=device)  # [T, N, 2]
        loose = torch.as_tensor(unphased[sites][:, todo], device=device)
        panel_c, cm_c = panel_t[:, sites], cm_t[sites]
        plan_steps = steps(calls.shape[0], options.step, options.context)
        estimate = None
        for _ in range(options.rounds):
            estimate = torch.cat([_pair_round(panel_c, calls[:, block], None if estimate is None else estimate[:, block],
                                              loose[:, block], cm_c, plan_steps, options, penalty(block))
                                  for block in _blocks(todo.size, pair_block)], dim=1)
            done += 1
            if on_pass is not None:
                on_pass(done, passes)
            for sweep in range(options.sweeps):
                estimate = torch.cat([_sweep_both_ways(panel_c, calls[:, block], estimate[:, block], loose[:, block],
                                                       cm_c, plan_steps, options, penalty(block),
                                                       backwards=sweep % 2 == 1)
                                      for block in _blocks(todo.size, sweep_block)], dim=1)
                done += 1
                if on_pass is not None:
                    on_pass(done, passes)
        pieces.append(estimate.cpu().numpy())
    result[:, todo] = _ligate(pieces, chunks, unphased[:, todo])
    return result


def _blocks(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def _pair_round(panel: torch.Tensor, calls: torch.Tensor, estimate: torch.Tensor | None, unphased: torch.Tensor,
                cm: torch.Tensor, plan_steps: list[tuple[slice, slice]], options: PhasingOptions,
                penalty: torch.Tensor) -> torch.Tensor:
    """One round of the pair model (`_decode`) with states chosen a step (`_choose_states`)."""
    plan = [(sites, _choose_states(panel, calls, estimate, context, options.states, penalty))
            for sites, context in plan_steps]
    return _decode(panel, plan, calls, unphased, cm, options)


def _sweep_both_ways(panel: torch.Tensor, calls: torch.Tensor, estimate: torch.Tensor, unphased: torch.Tensor,
                     cm: torch.Tensor, plan_steps: list[tuple[slice, slice]], options: PhasingOptions,
                     penalty: torch.Tensor, backwards: bool) -> torch.Tensor:
    """One haploid sweep (`_sweep`), left to right or (backwards) right to left, with states near the estimate."""
    plan = [(sites, _shared_states(panel, estimate, context, options.sweep_states, penalty))
            for sites, context in plan_steps]
    if not backwards:
        return _sweep(panel, plan, calls, estimate, unphased, cm, options)
    n = calls.shape[0]
    plan = [(slice(n - sites.stop, n - sites.start), states) for sites, states in reversed(plan)]
    return _sweep(panel.flip(1), plan, calls.flip(0), estimate.flip(0), unphased.flip(0), -cm.flip(0),
                  options).flip(0)


def segments(n_sites: int, length: int, overlap: int) -> list[slice]:
    """Overlapping slices covering 0..n_sites: as few as `length` allows, equally long, consecutive ones sharing
    at least `overlap` sites."""
    if n_sites <= length:
        return [slice(0, n_sites)]
    count = int(np.ceil((n_sites - overlap) / (length - overlap)))
    size = int(np.ceil((n_sites + (count - 1) * overlap) / count))
    starts = np.round(np.linspace(0, n_sites - size, count)).astype(int)
    return [slice(int(start), int(start) + size) for start in starts]


def _ligate(pieces: list[np.ndarray], chunks: list[slice], unphased: np.ndarray) -> np.ndarray:
    """int8 [T, B, 2]: phased chunks joined at the middle of each overlap, each sample's next chunk swapped
    where its unphased heterozygotes in the overlap agree less often than not with the phase so far."""
    joined = pieces[0]
    for previous, sites, piece in zip(chunks, chunks[1:], pieces[1:]):
        shared = slice(sites.start, previous.stop)
        loose = unphased[shared]
        same = ((joined[shared, :, 0] == piece[:shared.stop - sites.start, :, 0]) & loose).sum(axis=0)
        swap = (2 * same < loose.sum(axis=0))[None, :] & unphased[sites]
        piece = np.where(swap[..., None], piece[..., ::-1], piece)
        middle = (shared.start + shared.stop) // 2
        joined = np.concatenate([joined[:middle], piece[middle - sites.start:]])
    return joined


def steps(n_sites: int, step: int, context: int) -> list[tuple[slice, slice]]:
    """(sites, context) pairs: consecutive `step`-site slices covering 0..n_sites, each with the `context`
    sites centred on it (clipped at the ends, shifted to stay `context` long where the sites allow)."""
    out = []
    for start in range(0, n_sites, step):
        stop = min(start + step, n_sites)
        lo = max(0, min((start + stop - context) // 2, n_sites - context))
        out.append((slice(start, stop), slice(lo, min(lo + context, n_sites))))
    return out


def _choose_states(panel: torch.Tensor, calls: torch.Tensor, estimate: torch.Tensor | None, context: slice,
                   k: int, penalty: torch.Tensor) -> torch.Tensor:
    """int64 [B, 2, K] the panel haplotypes each haplotype of a sample copies at one step, ranked over the
    context sites: with no estimate yet, the same K for both, those with the fewest opposite homozygotes to the
    calls; else each haplotype's K nearest (Hamming at its known alleles) in the estimate [T, B, 2]. `penalty`
    [B, H] is added to the distances (a seeded tie-break below 1; +inf bars a sample's own haplotypes)."""
    k = min(k, int(torch.isfinite(penalty).sum(dim=1).min()))  # a tiny panel: fewer states
    alt = panel[:, context].to(torch.float32)  # [H, C]
    ref = 1.0 - alt
    if estimate is None:
        calls = calls[context]
        hom_ref = ((calls[..., 0] == 0) & (calls[..., 1] == 0)).to(torch.float32).T  # [B, C]
        hom_alt = ((calls[..., 0] == 1) & (calls[..., 1] == 1)).to(torch.float32).T
        distance = hom_ref @ alt.T + hom_alt @ ref.T  # [B, H]
        return torch.topk(-(distance.double() + penalty), k, dim=1).indices[:, None, :].expand(-1, 2, -1)
    hap = estimate[context].permute(1, 2, 0)  # [B, 2, C]
    distance = (hap == 0).to(torch.float32) @ alt.T + (hap == 1).to(torch.float32) @ ref.T  # [B, 2, H]
    return torch.topk(-(distance.double() + penalty[:, None, :]), k, dim=2).indices


def _pair_step(x: torch.Tensor, index: torch.Tensor | None, stay: torch.Tensor, move: torch.Tensor) -> torch.Tensor:
    """One transition of the pair chain on values x [B, K, K] (sum-product; rows: the first haplotype's states,
    columns the second's) into state sets whose states sit at index[:, 0] and index[:, 1] [B, K] of x's rows
    and columns (-1: not there, entered only by a switch); None: the same states. Forward: x the forward
    values, index each new state's place among the old; backward: x = emission x backward values, the reverse."""
    total = x.sum(dim=(1, 2), keepdim=True)  # both switch
    row, col = x.sum(dim=2), x.sum(dim=1)  # the first haplotype stays and the second switches, or the reverse
    if index is not None:
        b, k = x.shape[:2]
        first, second = index[:, 0], index[:, 1]
        at1, at2 = first.clamp(min=0), second.clamp(min=0)
        row = torch.where(first >= 0, row.gather(1, at1), 0.0)
        col = torch.where(second >= 0, col.gather(1, at2), 0.0)
        both = (first >= 0)[:, :, None] & (second >= 0)[:, None, :]
        flat = (at1[:, :, None] * k + at2[:, None, :]).flatten(1)
        x = torch.where(both, x.flatten(1).gather(1, flat).view(b, k, k), 0.0)
    return stay * stay * x + stay * move * (row[:, :, None] + col[:, None, :]) + move * move * total


def _places(states: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """int64 [..., K]: where each of `states` [..., K] sits in `other` [..., K'], -1 where it does not."""
    same = states[..., :, None] == other[..., None, :]
    return torch.where(same.any(dim=-1), same.to(torch.int8).argmax(dim=-1), -1)


def _decode(panel: torch.Tensor, plan: list[tuple[slice, torch.Tensor]], calls: torch.Tensor,
            unphased: torch.Tensor, cm: torch.Tensor, options: PhasingOptions) -> torch.Tensor:
    """int8 [T, B, 2]: the calls phased by forward-backward in the pair model (see the module doc).

    Each unphased heterozygote takes the orientation relative to the sample's previous one (the same, or
    swapped) that is more probable given all the calls: the choice that minimises expected switch errors.
    States change between steps of the plan: a haplotype in both sets keeps its probability, a new one is
    entered by a switch."""
    n_sites, b = calls.shape[:2]
    k = plan[0][1].shape[2]
    device = panel.device
    eps = options.mismatch
    r = switch_probabilities(cm[None, :], options.ne, k).to(torch.float32)[0]  # [T - 1]
    step_of = np.zeros(n_sites, dtype=np.int64)
    for u, (sites, _) in enumerate(plan):
        step_of[sites] = u
    alleles = torch.empty((n_sites, b, 2, k), dtype=torch.int8, device=device)
    for sites, states in plan:
        alleles[sites] = panel[:, sites].T[:, states]
    missing = (calls[..., 0] < 0)[..., None, None]
    fit_alt = torch.where(missing, 1.0, torch.where(alleles == 1, 1.0 - eps, eps))  # [T, B, 2, K]
    fit_ref = torch.where(missing, 1.0, torch.where(alleles == 0, 1.0 - eps, eps))
    het = unphased & (calls[..., 0] >= 0)

    def emissions(t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[B, K, K] each: the calls at t given the pair (an unphased heterozygote in either order), and an
        unphased heterozygote with ALT on the first haplotype, or REF."""
        alt_first = fit_alt[t, :, 0][:, :, None] * fit_ref[t, :, 1][:, None, :]
        ref_first = fit_ref[t, :, 0][:, :, None] * fit_alt[t, :, 1][:, None, :]
        one = torch.where((calls[t, :, 0] == 1)[:, None], fit_alt[t, :, 0], fit_ref[t, :, 0])
        two = torch.where((calls[t, :, 1] == 1)[:, None], fit_alt[t, :, 1], fit_ref[t, :, 1])
        given = torch.where(het[t][:, None, None], alt_first + ref_first, one[:, :, None] * two[:, None, :])
        return given, alt_first, ref_first

    def places(t: int, backward: bool) -> torch.Tensor | None:
        """[B, 2, K] between t - 1 and t: each haplotype's new states' places among its old (or the reverse)."""
        if step_of[t] == step_of[t - 1]:
            return None
        new, old = plan[step_of[t]][1], plan[step_of[t - 1]][1]
        return _places(old, new) if backward else _places(new, old)

    beta = torch.empty((n_sites, b, k, k), dtype=torch.bfloat16, device=device)  # normalised: bfloat16 holds them
    beta[-1] = 1.0
    x = torch.ones((b, k, k), device=device)
    for t in range(n_sites - 1, 0, -1):
        x = _pair_step(emissions(t)[0] * x, places(t, backward=True), 1.0 - r[t - 1], r[t - 1] / k)
        x = x / x.amax(dim=(1, 2), keepdim=True)
        beta[t - 1] = x

    # forward, two values a pair: the mass whose last unphased heterozygote had ALT on the first haplotype
    # (tag 0) or REF (tag 1); before the first one, all in tag 0 (so the first is decided by its own posterior)
    tags = [torch.ones((b, k, k), device=device), torch.zeros((b, k, k), device=device)]
    swap = torch.zeros((n_sites, b), dtype=torch.bool, device=device)
    for t in range(n_sites):
        if t > 0:
            index = places(t, backward=False)
            tags = [_pair_step(tag, index, 1.0 - r[t - 1], r[t - 1] / k) for tag in tags]
        given, alt_first, ref_first = emissions(t)
        future = beta[t].float()
        # joint[tag][order]: probability of the last orientation and this one, given every call
        weighted = [alt_first * future, ref_first * future]
        joint = [[(tag * w).sum(dim=(1, 2)) for w in weighted] for tag in tags]
        swap[t] = joint[0][1] + joint[1][0] > joint[0][0] + joint[1][1]
        at_het = het[t][:, None, None]
        mass = tags[0] + tags[1]
        tags = [torch.where(at_het, mass * alt_first, tags[0] * given),
                torch.where(at_het, mass * ref_first, tags[1] * given)]
        scale = torch.maximum(tags[0].amax(dim=(1, 2), keepdim=True), tags[1].amax(dim=(1, 2), keepdim=True))
        tags = [tag / scale for tag in tags]
    # orientation 0: ALT on the first haplotype; it flips at every heterozygote decided "swapped"
    orientation = torch.cumsum((swap & het).to(torch.int64), dim=0) % 2
    first = torch.where(orientation == 0, 1, 0).to(torch.int8)
    phased = calls.clone()
    phased[..., 0] = torch.where(het, first, calls[..., 0])
    phased[..., 1] = torch.where(het, 1 - first, calls[..., 1])
    return phased


def _hap_step(x: torch.Tensor, index: torch.Tensor | None, stay: torch.Tensor, move: torch.Tensor) -> torch.Tensor:
    """One transition of a haploid chain on values x [..., K] (sum-product) into a state set whose states sit at
    `index` [..., K] of x's (-1: not there, entered only by a switch); None: the same states."""
    total = x.sum(dim=-1, keepdim=True)
    if index is not None:
        x = torch.where(index >= 0, x.gather(-1, index.clamp(min=0)), 0.0)
    return stay * x + move * total


def _sweep(panel: torch.Tensor, plan: list[tuple[slice, torch.Tensor]], calls: torch.Tensor, estimate: torch.Tensor,
           unphased: torch.Tensor, cm: torch.Tensor, options: PhasingOptions) -> torch.Tensor:
    """int8 [T, B, 2]: the estimate [T, B, 2] improved by one haploid sweep. Both haplotypes copy the same K
    states a step (plan: states [B, K], near either haplotype of the estimate). Left to right, the first
    haplotype follows one haplotype of the estimate (the second the other) and may switch which at each unphased
    heterozygote: the choice more probable for both haplotypes together, given the phase decided on the left
    and the estimate on the right (backward values under each haplotype of the estimate)."""
    n_sites, b = calls.shape[:2]
    k = plan[0][1].shape[1]
    eps = options.mismatch
    r = switch_probabilities(cm[None, :], options.ne, k).to(torch.float32)[0]
    het = unphased & (calls[..., 0] >= 0)

    def emissions(sites: slice, states: torch.Tensor) -> torch.Tensor:
        """[n, B, 2, K]: each haplotype of the estimate at the sites given each state (1 where the call is
        missing)."""
        alleles = panel[:, sites].T[:, states][:, :, None, :]  # [n, B, 1, K]
        e = torch.where(alleles == estimate[sites][..., None], 1.0 - eps, eps)
        return torch.where((calls[sites, :, 0] < 0)[:, :, None, None], 1.0, e)

    def carried(u: int, backward: bool) -> torch.Tensor:
        """[B, 2, K] at the start of plan step u: its states' places among step u - 1's (or the reverse)."""
        new, old = plan[u][1], plan[u - 1][1]
        return (_places(old, new) if backward else _places(new, old))[:, None, :].expand(-1, 2, -1)

    beta = torch.empty((n_sites, b, 2, k), dtype=torch.float32, device=panel.device)  # [T, B, sequence, K]
    x = torch.ones((b, 2, k), device=panel.device)
    for u in range(len(plan) - 1, -1, -1):
        sites, states = plan[u]
        e = emissions(sites, states)
        for i in range(sites.stop - sites.start - 1, -1, -1):
            t = sites.start + i
            beta[t] = x
            if t == 0:
                break
            index = carried(u, backward=True) if i == 0 else None
            x = _hap_step(e[i] * x, index, 1.0 - r[t - 1], r[t - 1] / k)
            x = x / x.amax(dim=2, keepdim=True)
    follows = torch.zeros((n_sites, b), dtype=torch.int64, device=panel.device)  # the first haplotype's at t
    now = torch.zeros(b, dtype=torch.int64, device=panel.device)
    rows = torch.arange(b, device=panel.device)
    alpha = torch.ones((b, 2, k), device=panel.device)
    for u, (sites, states) in enumerate(plan):
        e = emissions(sites, states)
        for i in range(sites.stop - sites.start):
            t = sites.start + i
            if t > 0:
                alpha = _hap_step(alpha, carried(u, backward=False) if i == 0 else None, 1.0 - r[t - 1], r[t - 1] / k)
            # score[:, h, i, j]: haplotype h with the allele of the estimate's haplotype i at t and following its
            # haplotype j after t
            score = torch.einsum("bhk,bik,bjk->bhij", alpha, e[i], beta[t])
            keep, other = now, 1 - now
            options_ = torch.stack([score[rows, 0, keep, keep] * score[rows, 1, other, other],  # as so far
                                    score[rows, 0, other, other] * score[rows, 1, keep, keep],  # switch from t on
                                    score[rows, 0, other, keep] * score[rows, 1, keep, other]])  # swap t alone
            choice = torch.where(het[t], options_.argmax(dim=0), 0)
            now = torch.where(choice == 1, 1 - now, now)
            side = torch.where(choice == 2, 1 - now, torch.where(het[t], now, 0))  # phased calls keep their order
            follows[t] = side
            order = torch.stack([side, 1 - side], dim=1)[..., None].expand(-1, -1, k)
            alpha = alpha * e[i].gather(1, order)
            alpha = alpha / alpha.amax(dim=2, keepdim=True)
    swapped = estimate.flip(2)
    return torch.where((het & (follows == 1))[..., None], swapped, torch.where(het[..., None], estimate, calls))


def _shared_states(panel: torch.Tensor, estimate: torch.Tensor, context: slice, k: int,
                   penalty: torch.Tensor) -> torch.Tensor:
    """int64 [B, K]: K/2 panel haplotypes nearest each haplotype of the estimate (Hamming over the context
    sites), distinct; `penalty` [B, H] as in `_choose_states`."""
    k = min(k, int(torch.isfinite(penalty).sum(dim=1).min()))  # a tiny panel: fewer states
    alt = panel[:, context].to(torch.float32)
    hap = estimate[context].permute(1, 2, 0)  # [B, 2, C]
    distance = ((hap == 0).to(torch.float32) @ alt.T + (hap == 1).to(torch.float32) @ (1.0 - alt).T).double()
    distance = distance + penalty[:, None, :]
    first = torch.topk(-distance[:, 0], k - k // 2, dim=1).indices
    second = distance[:, 1].scatter(1, first, float("inf"))
    return torch.cat([first, torch.topk(-second, k // 2, dim=1).indices], dim=1)
