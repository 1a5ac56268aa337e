"""The Li-Stephens copying model: exact posteriors, interpolation, exclusion, and neighbours that follow the query."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ragtrain import hmm
from ragtrain.hmm import WEIGHT_BUCKETS, WindowCopying, copying, switch_probabilities, weight_buckets


def run(alleles, query, cm, states=None, allowed=None, **kwargs):
    """One pass over the whole span (every haplotype a state unless `states` is given)."""
    b, n_hap = query.shape[0], alleles.shape[0]
    states = torch.arange(n_hap).expand(b, -1) if states is None else torch.as_tensor(states)
    return copying(torch.as_tensor(alleles), torch.as_tensor(query), torch.as_tensor(cm, dtype=torch.float64),
                   states, None if allowed is None else torch.as_tensor(allowed), **kwargs)


def alt_probability(result, sites: slice, alleles) -> np.ndarray:
    """float [B, n]: the pass's P(ALT) at `sites` (alleles [H, n] at those sites)."""
    return result.at(sites).alt_probability(torch.as_tensor(alleles), None if result.every_haplotype else result.states).numpy()


def brute_force_posteriors(alleles, query, cm, ne, mismatch, allowed):
    """P(copying h at observed site m | query) by summing over every path of states."""
    n_hap = alleles.shape[0]
    obs = np.flatnonzero(query >= 0)
    states = np.flatnonzero(allowed)
    r = switch_probabilities(cm[obs], ne, states.size)  # a switch goes to one of the allowed states
    post = np.zeros((obs.size, n_hap))
    for path in itertools.product(states, repeat=obs.size):
        p = 1.0 / states.size
        for m, h in enumerate(path):
            if m:
                p *= (1 - r[m - 1]) * (path[m - 1] == h) + r[m - 1] / states.size
            p *= 1 - mismatch if alleles[h, obs[m]] == query[obs[m]] else mismatch
        for m, h in enumerate(path):
            post[m, h] += p
    return post / post.sum(axis=1, keepdims=True)


def test_posteriors_equal_the_sum_over_all_paths():
    rng = np.random.default_rng(0)
    alleles = rng.integers(0, 2, size=(4, 9)).astype(np.int8)
    query = rng.integers(0, 2, size=(2, 9)).astype(np.int8)
    query[:, [1, 4, 6]] = -1  # hidden: 6 observed sites a query
    query[1, 8] = -1
    cm = np.sort(rng.uniform(0, 0.05, size=9))
    allowed = np.ones((2, 4), dtype=bool)
    allowed[1, 2] = False  # the second query may not copy haplotype 2 (its own sample)
    result = run(alleles, query, cm, allowed=allowed, ne=1000, mismatch=0.05)
    gamma = result.gamma.numpy()
    for b in range(2):
        expected = brute_force_posteriors(alleles, query[b], cm, 1000, 0.05, allowed[b])
        n = expected.shape[0]
        np.testing.assert_allclose(gamma[:n, b], expected, rtol=1e-4, atol=1e-6)
        if n < gamma.shape[0]:  # padded steps repeat the last posterior
            np.testing.assert_allclose(gamma[n:, b], np.broadcast_to(expected[-1], gamma[n:, b].shape),
                                       rtol=1e-4, atol=1e-6)
    assert (gamma[:, 1, 2] == 0).all()


def test_alt_probability_interpolates_between_observed_sites_in_genetic_distance():
    alleles = np.array([[0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=np.int8)
    query = np.array([[0, -1, -1, -1, 1]], dtype=np.int8)
    cm = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    result = run(alleles, query, cm, ne=1e5, mismatch=1e-3)
    p = alt_probability(result, slice(0, 5), alleles)[0]
    g0, g1 = result.gamma[0, 0, 1].item(), result.gamma[1, 0, 1].item()  # P(copy the ALT haplotype) when observed
    np.testing.assert_allclose(p, [g0, 0.75 * g0 + 0.25 * g1, 0.5 * g0 + 0.5 * g1, 0.25 * g0 + 0.75 * g1, g1],
                               rtol=1e-5)
    assert p[0] < 0.01 and p[-1] > 0.99 and np.all(np.diff(p) > 0)
    at = result.at(slice(0, 5))
    weights = at.weights(torch.tensor([[1, 0]])).numpy()
    np.testing.assert_allclose(weights[0, 0], p, rtol=1e-5)  # one ALT haplotype: its weight is P(ALT)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(at.mass()[0].numpy(), weights[0].sum(axis=1), rtol=1e-5)


def test_a_query_without_observed_sites_copies_uniformly():
    alleles = np.eye(3, 6, dtype=np.int8)
    result = run(alleles, np.full((1, 6), -1, dtype=np.int8), np.linspace(0, 1, 6))
    np.testing.assert_allclose(result.gamma[:, 0].numpy(), 1 / 3)
    np.testing.assert_allclose(alt_probability(result, slice(0, 6), alleles)[0], alleles.mean(axis=0), rtol=1e-6)


def test_neighbours_follow_a_planted_shared_segment():
    """The query copies haplotype 5 on the left half and haplotype 11 on the right: the haplotype with the most
    copying mass in each half is the one it shares there, though neither matches it over the whole span."""
    rng = np.random.default_rng(3)
    alleles = rng.integers(0, 2, size=(40, 400)).astype(np.int8)
    truth = np.concatenate([alleles[5, :200], alleles[11, 200:]])
    query = np.where(np.arange(400) % 4 == 0, truth, -1).astype(np.int8)[None]  # every 4th site typed
    result = run(alleles, query, np.linspace(0, 2, 400), ne=1000, mismatch=1e-3)
    assert int(result.at(slice(20, 180)).mass().argmax()) == 5
    assert int(result.at(slice(220, 380)).mass().argmax()) == 11
    p = alt_probability(result, slice(0, 400), alleles)[0]
    hidden = query[0] < 0
    inside = hidden & ((np.arange(400) < 190) | (np.arange(400) > 210))
    assert np.mean((p[inside] > 0.5) == (truth[inside] == 1)) > 0.97


def test_weight_buckets():
    w = torch.tensor([1.0, 0.5, 0.3, 2.0**-14, 2.0**-20, 0.0])
    assert weight_buckets(w).tolist() == [0, 1, 1, 14, WEIGHT_BUCKETS - 1, WEIGHT_BUCKETS - 1]


def test_switch_probability_grows_with_distance_and_ne():
    cm = np.array([0.0, 0.001, 0.011, 0.111])
    low, high = switch_probabilities(cm, 1e3, 100), switch_probabilities(cm, 1e4, 100)
    for r in (low, high):
        assert np.all(np.diff(r) > 0) and np.all((r > 0) & (r < 1))
    assert np.all(high > low)
    np.testing.assert_allclose(low[0], 1 - np.exp(-4 * 1e3 * 1e-5 / 100))
    np.testing.assert_allclose(switch_probabilities(torch.as_tensor(cm), 1e3, 100).numpy(), low)


def test_per_query_states_equal_the_copying_model_over_those_haplotypes_alone(monkeypatch):
    rng = np.random.default_rng(5)
    alleles = rng.integers(0, 2, size=(30, 60)).astype(np.int8)
    query = np.where(rng.random((3, 60)) < 0.3, rng.integers(0, 2, size=(3, 60)), -1).astype(np.int8)
    cm = np.linspace(0, 0.3, 60)
    states = np.stack([rng.choice(30, size=8, replace=False) for _ in range(3)])
    result = run(alleles, query, cm, states=states, ne=5000, mismatch=0.01)
    p = alt_probability(result, slice(10, 50), alleles[:, 10:50])
    for b in range(3):
        alone = run(alleles[states[b]], query[b:b + 1], cm, ne=5000, mismatch=0.01)
        n = int((query[b] >= 0).sum())
        np.testing.assert_allclose(result.gamma[:n, b].numpy(), alone.gamma[:n, 0].numpy(), rtol=1e-5, atol=1e-7)
        p_alone = alt_probability(alone, slice(10, 50), alleles[states[b], 10:50])
        np.testing.assert_allclose(p[b], p_alone[0], rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(hmm, "SITE_BLOCK", 3)  # blocks of sites, each through only the rows they lie between
    np.testing.assert_allclose(alt_probability(result, slice(10, 50), alleles[:, 10:50]), p, rtol=1e-5, atol=1e-7)
    monkeypatch.setattr(hmm, "HAPLOTYPE_SPACE", 0)  # the states' alleles gathered, not the haplotypes' summed
    np.testing.assert_allclose(alt_probability(result, slice(10, 50), alleles[:, 10:50]), p, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("emission_block", [256, 5], ids=["one-table", "tables-of-5-steps"])
def test_queries_observing_the_same_sites_equal_the_general_pass(monkeypatch, emission_block):
    """Shared sites: emissions read from each step's table over the haplotypes (built `EMISSION_BLOCK` steps at
    a time); otherwise from the states' carried alleles."""
    monkeypatch.setattr(hmm, "EMISSION_BLOCK", emission_block)
    rng = np.random.default_rng(8)
    alleles = rng.integers(0, 2, size=(40, 80)).astype(np.int8)
    typed = rng.random(80) < 0.3
    query = np.where(typed, rng.integers(0, 2, size=(3, 80)), -1).astype(np.int8)  # one set of observed sites
    states = np.stack([rng.choice(40, size=12, replace=False) for _ in range(4)])
    cm = np.linspace(0, 0.4, 80)
    shared = run(alleles, query, cm, states=states[:3], ne=5000, mismatch=0.01)
    other = np.where(rng.random(80) < 0.3, 1, -1).astype(np.int8)[None]  # a fourth query observing other sites
    general = run(alleles, np.concatenate([query, other]), cm, states=states, ne=5000, mismatch=0.01)
    n = int(typed.sum())
    assert n > 2 * emission_block or emission_block > n
    np.testing.assert_allclose(shared.gamma[:n].numpy(), general.gamma[:n, :3].numpy(), rtol=1e-6, atol=1e-9)


def test_most_copied_is_a_stable_sorts_first_k_ties_by_lower_index():
    generator = torch.Generator().manual_seed(2)
    rows = torch.randint(0, 4, (3, 5, 40), generator=generator).float() / 4  # [R, B, N]: many equal masses
    left = torch.randint(0, 3, (5, 7), generator=generator)
    window = WindowCopying(rows, left, left, torch.zeros(5, 7))
    mass = window.mass()
    assert any(len(set(row.tolist())) < 40 for row in mass)
    for k in (1, 6, 40):
        expected = torch.sort(mass, dim=1, descending=True, stable=True).indices[:, :k]
        assert torch.equal(window.most_copied(k), expected)
