"""The Li-Stephens copying model: exact posteriors, interpolation, exclusion, and neighbours that follow the query."""

from __future__ import annotations

import itertools

import numpy as np

from ragtrain.hmm import WEIGHT_BUCKETS, Copying, copying, switch_probabilities, weight_buckets


def brute_force_posteriors(alleles, query, cm, ne, mismatch, allowed):
    """P(copying h at observed site m | query) by summing over every path of states."""
    n_hap = alleles.shape[0]
    obs = np.flatnonzero(query >= 0)
    r = switch_probabilities(cm[obs], ne, n_hap)
    states = np.flatnonzero(allowed)
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
    exclude = np.array([[-1], [2]])  # the second query may not copy haplotype 2
    model = copying(alleles, query, cm, exclude, ne=1000, mismatch=0.05)
    for b in range(2):
        allowed = np.ones(4, dtype=bool)
        allowed[exclude[b][exclude[b] >= 0]] = False
        expected = brute_force_posteriors(alleles, query[b], cm, 1000, 0.05, allowed)
        n = expected.shape[0]
        np.testing.assert_allclose(model.gamma[b, :n], expected, rtol=1e-4, atol=1e-6)
        if n < model.gamma.shape[1]:  # padded steps repeat the last posterior
            np.testing.assert_allclose(model.gamma[b, n:], np.broadcast_to(expected[-1], model.gamma[b, n:].shape),
                                       rtol=1e-4, atol=1e-6)
    assert (model.gamma[1, :, 2] == 0).all()


def test_alt_probability_interpolates_between_observed_sites_in_genetic_distance():
    alleles = np.array([[0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=np.int8)
    query = np.array([[0, -1, -1, -1, 1]], dtype=np.int8)
    cm = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    model = copying(alleles, query, cm, ne=1e5, mismatch=1e-3, sites=slice(0, 5))
    p = model.alt_probability(alleles)[0]
    g0, g1 = model.gamma[0, 0, 1], model.gamma[0, 1, 1]  # P(copy the ALT haplotype) at the two observed sites
    np.testing.assert_allclose(p, [g0, 0.75 * g0 + 0.25 * g1, 0.5 * g0 + 0.5 * g1, 0.25 * g0 + 0.75 * g1, g1],
                               rtol=1e-5)
    assert p[0] < 0.01 and p[-1] > 0.99 and np.all(np.diff(p) > 0)
    weights = model.weights(np.array([[1, 0]]))
    np.testing.assert_allclose(weights[0, 0], p, rtol=1e-5)  # one ALT haplotype: its weight is P(ALT)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(model.mass()[0], weights[0].sum(axis=1), rtol=1e-5)


def test_a_query_without_observed_sites_copies_uniformly():
    alleles = np.eye(3, 6, dtype=np.int8)
    model = copying(alleles, np.full((1, 6), -1, dtype=np.int8), np.linspace(0, 1, 6))
    np.testing.assert_allclose(model.gamma[0], 1 / 3)
    np.testing.assert_allclose(model.alt_probability(alleles)[0], alleles.mean(axis=0), rtol=1e-6)


def test_neighbours_follow_a_planted_shared_segment():
    """The query copies haplotype 5 on the left half and haplotype 11 on the right: the haplotype with the most
    copying mass in each half is the one it shares there, though neither matches it over the whole span."""
    rng = np.random.default_rng(3)
    alleles = rng.integers(0, 2, size=(40, 400)).astype(np.int8)
    truth = np.concatenate([alleles[5, :200], alleles[11, 200:]])
    query = np.where(np.arange(400) % 4 == 0, truth, -1).astype(np.int8)[None]  # every 4th site typed
    def model(sites: slice):
        return copying(alleles, query, np.linspace(0, 2, 400), ne=1000, mismatch=1e-3, sites=sites)

    assert np.argmax(model(slice(20, 180)).mass()[0]) == 5
    assert np.argmax(model(slice(220, 380)).mass()[0]) == 11
    p = model(slice(0, 400)).alt_probability(alleles)[0]
    hidden = query[0] < 0
    inside = hidden & ((np.arange(400) < 190) | (np.arange(400) > 210))
    assert np.mean((p[inside] > 0.5) == (truth[inside] == 1)) > 0.97


def test_weight_buckets():
    w = np.array([1.0, 0.5, 0.3, 2.0**-14, 2.0**-20, 0.0])
    assert weight_buckets(w).tolist() == [0, 1, 1, 14, WEIGHT_BUCKETS - 1, WEIGHT_BUCKETS - 1]


def test_switch_probability_grows_with_distance_and_ne():
    cm = np.array([0.0, 0.001, 0.011, 0.111])
    low, high = switch_probabilities(cm, 1e3, 100), switch_probabilities(cm, 1e4, 100)
    for r in (low, high):
        assert np.all(np.diff(r) > 0) and np.all((r > 0) & (r < 1))
    assert np.all(high > low)
    np.testing.assert_allclose(low[0], 1 - np.exp(-4 * 1e3 * 1e-5 / 100))


def test_per_query_states_equal_the_copying_model_over_those_haplotypes_alone():
    rng = np.random.default_rng(5)
    alleles = rng.integers(0, 2, size=(30, 60)).astype(np.int8)
    query = np.where(rng.random((3, 60)) < 0.3, rng.integers(0, 2, size=(3, 60)), -1).astype(np.int8)
    cm = np.linspace(0, 0.3, 60)
    states = np.stack([rng.choice(30, size=8, replace=False) for _ in range(3)])
    model = copying(alleles, query, cm, states=states, ne=5000, mismatch=0.01)
    for b in range(3):
        alone = copying(alleles[states[b]], query[b:b + 1], cm, ne=5000, mismatch=0.01)
        n = alone.gamma.shape[1]
        np.testing.assert_allclose(model.gamma[b, :n], alone.gamma[0], rtol=1e-5, atol=1e-7)
        inside = copying(alleles, query, cm, states=states, ne=5000, mismatch=0.01, sites=slice(10, 50))
        inside_alone = copying(alleles[states[b]], query[b:b + 1], cm, ne=5000, mismatch=0.01, sites=slice(10, 50))
        np.testing.assert_allclose(inside.alt_probability(alleles)[b], inside_alone.alt_probability(alleles[states[b]])[0],
                                   rtol=1e-5, atol=1e-6)


def test_a_window_gets_the_posteriors_of_the_whole_span_bit_for_bit():
    """Asking for some sites runs the forward pass only up to them and the backward pass only down to them:
    what those sites get is exactly what a pass over every step gives them."""
    rng = np.random.default_rng(8)
    alleles = rng.integers(0, 2, size=(50, 300)).astype(np.int8)
    query = np.where(rng.random((4, 300)) < 0.2, rng.integers(0, 2, size=(4, 300)), -1).astype(np.int8)
    cm = np.sort(rng.uniform(0, 1, 300))
    states = np.stack([rng.choice(50, size=16, replace=False) for _ in range(4)])
    full = copying(alleles, query, cm, states=states)
    ids = np.argsort(-full.mass(), axis=1, kind="stable")[:, :3]
    for sites in (slice(0, 40), slice(130, 170), slice(260, 300)):
        part = copying(alleles, query, cm, states=states, sites=sites)
        assert part.gamma.shape[1] < full.gamma.shape[1]
        np.testing.assert_array_equal(part.alt_probability(alleles), full.alt_probability(alleles)[:, sites])
        np.testing.assert_array_equal(part.weights(ids), full.weights(ids)[:, :, sites])
        rows = slice(part.first, part.first + part.gamma.shape[1])
        np.testing.assert_array_equal(part.gamma, full.gamma[:, rows])
        uncut = Copying(full.gamma, part.left + part.first, part.right + part.first, part.t, sites, 0, full.steps,
                        states)  # the same sites over every row
        np.testing.assert_array_equal(part.mass(), uncut.mass())
