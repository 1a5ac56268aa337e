"""Retrieval is exact masked-Hamming top-k, deterministic in ties, identical across backends, leak-free."""

from __future__ import annotations

import sys

import faiss  # noqa: F401 - installed by `make test` (extra [cpu]): these tests exercise the real thing
import numpy as np
import pytest

from ragtrain.retrieval import (
    MATCH_BUCKETS,
    WindowIndex,
    encode_pm1,
    local_nearest,
    match_buckets,
    own_haplotypes,
    retrieve,
)
from stores.errors import UserError

BACKENDS = ["faiss", "torch"]


def brute_force(ref: np.ndarray, queries: np.ndarray, k: int, exclude: np.ndarray | None = None):
    """Plain numpy: score = agreements - disagreements over each query's observed sites; best score first,
    ties by lower id; excluded ids dropped."""
    observed = queries[:, None, :] >= 0
    same = queries[:, None, :] == ref[None, :, :]
    score = (observed & same).sum(-1) - (observed & ~same).sum(-1)  # [Q, H]
    ids = np.broadcast_to(np.arange(ref.shape[0]), score.shape)
    banned = np.zeros(score.shape, dtype=bool) if exclude is None else (ids[:, :, None] == exclude[:, None, :]).any(-1)
    order = np.lexsort((ids, -score, banned), axis=-1)[:, :k]
    assert not np.take_along_axis(banned, order, axis=1).any()
    return order.astype(np.int64), np.take_along_axis(score, order, axis=1).astype(np.float32)


def panel(rng: np.random.Generator, n_hap: int, n_sites: int, n_founders: int) -> np.ndarray:
    """Haplotypes copied from a few founders with a little noise: many exact duplicates, many ties."""
    founders = (rng.random((n_founders, n_sites)) < 0.3).astype(np.int8)
    ref = founders[rng.integers(n_founders, size=n_hap)]
    flip = rng.random(ref.shape) < 0.03
    return np.where(flip, 1 - ref, ref).astype(np.int8)


def masked_queries(rng: np.random.Generator, n_queries: int, n_sites: int, ratio: float) -> np.ndarray:
    queries = (rng.random((n_queries, n_sites)) < 0.3).astype(np.int8)
    return np.where(rng.random(queries.shape) < ratio, np.int8(-1), queries)


def test_encoding_is_pm1_with_zero_for_masked():
    assert encode_pm1(np.array([0, 1, -1], dtype=np.int8)).tolist() == [-1.0, 1.0, 0.0]
    assert encode_pm1(np.zeros((2, 3), dtype=np.int8)).dtype == np.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_brute_force_including_tie_order(backend):
    rng = np.random.default_rng(0)
    for trial in range(12):
        n_sites = int(rng.integers(4, 40))
        ref = panel(rng, n_hap=int(rng.integers(20, 120)), n_sites=n_sites, n_founders=int(rng.integers(2, 8)))
        queries = masked_queries(rng, 25, n_sites, ratio=float(rng.uniform(0.0, 0.95)))
        index = WindowIndex(ref, backend=backend)
        assert index.backend == ("faiss-cpu" if backend == "faiss" else "torch")
        for k in (1, 3, 8, ref.shape[0] // 2, ref.shape[0]):
            ids, scores = index.search(queries, k)
            want_ids, want_scores = brute_force(ref, queries, k)
            np.testing.assert_array_equal(ids, want_ids, err_msg=f"trial {trial} k {k}")
            np.testing.assert_array_equal(scores, want_scores)
            assert ids.dtype == np.int64 and scores.dtype == np.float32 and ids.shape == (25, k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_exclusion_matches_brute_force(backend):
    rng = np.random.default_rng(1)
    ref = panel(rng, n_hap=60, n_sites=24, n_founders=3)
    queries = masked_queries(rng, 30, 24, ratio=0.5)
    exclude = rng.integers(60, size=(30, 4))
    exclude[::3, 1] = -1  # ignored
    for k in (1, 5, 56):
        ids, scores = retrieve(ref, queries, k, exclude=exclude, backend=backend)
        want_ids, want_scores = brute_force(ref, queries, k, exclude)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(scores, want_scores)


def test_backends_agree_on_a_larger_panel():
    rng = np.random.default_rng(2)
    ref = panel(rng, n_hap=400, n_sites=128, n_founders=10)
    queries = masked_queries(rng, 200, 128, ratio=0.6)
    exclude = own_haplotypes(rng.integers(200, size=200))
    faiss_out = retrieve(ref, queries, 16, exclude, backend="faiss")
    torch_out = retrieve(ref, queries, 16, exclude, backend="torch")
    for a, b in zip(faiss_out, torch_out):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_query_from_the_panel_never_retrieves_its_own_sample(backend):
    rng = np.random.default_rng(3)
    ref = (rng.random((80, 32)) < 0.3).astype(np.int8)  # 40 diploid samples, no two alike
    samples = np.arange(40).repeat(2)
    queries = np.where(rng.random(ref.shape) < 0.3, np.int8(-1), ref)  # each haplotype, partly masked
    exclude = own_haplotypes(samples)
    assert exclude[5].tolist() == [4, 5]
    ids, _ = retrieve(ref, queries, 10, exclude=exclude, backend=backend)
    own = ids // 2 == samples[:, None]
    assert not own.any()
    unguarded, _ = retrieve(ref, queries, 1, backend=backend)
    assert (unguarded[:, 0] // 2 == samples).all()  # without the guard, queries find themselves


@pytest.mark.parametrize("backend", BACKENDS)
def test_ids_index_the_right_rows(backend):
    rng = np.random.default_rng(4)
    ref = panel(rng, n_hap=50, n_sites=30, n_founders=5)
    queries = masked_queries(rng, 20, 30, ratio=0.4)
    ids, scores = retrieve(ref, queries, 7, backend=backend)
    rows = ref[ids]  # [Q, k, n]
    observed = queries[:, None, :] >= 0
    agree = (observed & (rows == queries[:, None, :])).sum(-1)
    disagree = (observed & (rows != queries[:, None, :])).sum(-1)
    np.testing.assert_array_equal(scores, agree - disagree)
    assert (np.diff(scores, axis=1) <= 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_too_few_haplotypes_after_exclusion_is_a_clear_error(backend):
    ref = np.zeros((6, 5), dtype=np.int8)
    with pytest.raises(UserError, match="cannot retrieve k=5 .* 6 reference haplotypes .* 2 are excluded"):
        retrieve(ref, ref[:2], 5, exclude=np.array([[0, 1], [2, 3]]), backend=backend)
    ids, _ = retrieve(ref, ref[:2], 4, exclude=np.array([[0, 1], [2, 3]]), backend=backend)
    assert ids.tolist() == [[2, 3, 4, 5], [0, 1, 4, 5]]


def test_bad_arguments():
    ref = np.zeros((6, 5), dtype=np.int8)
    with pytest.raises(ValueError, match="backend"):
        WindowIndex(ref, backend="annoy")
    with pytest.raises(ValueError, match="queries must be"):
        retrieve(ref, np.zeros((2, 4), dtype=np.int8), 1)
    with pytest.raises(ValueError, match="exclude holds haplotype id 6"):
        retrieve(ref, ref[:1], 1, exclude=np.array([[6]]))
    ids, scores = retrieve(ref, np.zeros((0, 5), dtype=np.int8), 3)
    assert ids.shape == scores.shape == (0, 3)


def test_match_buckets_count_observed_sites_between_mismatches():
    observed = np.array([[0, -1, 1, 1, -1, 0, 1, 0]], dtype=np.int8)
    neighbours = np.array([[[0, 1, 1, 0, 0, 0, 1, 0],    # disagrees at site 3 (observed 1, neighbour 0)
                            [0, 0, 1, 1, 1, 0, 1, 0],    # agrees at every observed site (6 of them)
                            [1, 0, 1, 1, 0, 0, 1, 1]]], dtype=np.int8)  # disagrees at sites 0 and 7
    # n per site: neighbour 0 -> sites 0-2 see {0, 2} (2), site 3 is a mismatch (0), sites 4-7 see {5, 6, 7} (3);
    # neighbour 1 -> 6 everywhere; neighbour 2 -> 0 at 0 and 7, {2, 3, 5, 6} (4) between; bucket floor(log2(1 + n))
    expected = np.floor(np.log2(1 + np.array([[[2, 2, 2, 0, 3, 3, 3, 3], [6] * 8, [0, 4, 4, 4, 4, 4, 4, 0]]])))
    assert np.array_equal(match_buckets(observed, neighbours), expected.astype(np.int64))


def test_match_buckets_are_capped():
    observed = np.zeros((1, 2**15), dtype=np.int8)
    buckets = match_buckets(observed, np.zeros((1, 1, 2**15), dtype=np.int8))
    assert buckets.max() == MATCH_BUCKETS - 1 and buckets.min() == MATCH_BUCKETS - 1


def test_match_buckets_within_equals_the_slice_of_the_whole_span():
    rng = np.random.default_rng(3)
    observed = np.where(rng.random((4, 300)) < 0.1, rng.integers(0, 2, (4, 300)), -1).astype(np.int8)
    neighbours = rng.integers(0, 2, (4, 3, 300)).astype(np.int8)
    inside = slice(120, 180)
    assert np.array_equal(match_buckets(observed, neighbours, within=inside),
                          match_buckets(observed, neighbours)[:, :, inside])


def test_missing_faiss_is_one_line_naming_the_option(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if faiss were not installed: import faiss fails
    ref = np.zeros((4, 3), dtype=np.int8)
    with pytest.raises(UserError, match=r"^--retrieval: faiss is asked for but not installed; fix: .*--retrieval torch"):
        WindowIndex(ref, backend="faiss")
    assert WindowIndex(ref, backend="auto").backend == "torch"  # auto falls back to the exact torch path


def test_local_nearest_equals_an_exact_search_of_every_block():
    """Each block's k nearest over the block and `flank` observed sites each side, as one exact search of those
    columns would return them (ties by lower id, own haplotypes excluded)."""
    rng = np.random.default_rng(4)
    ref = rng.integers(0, 2, size=(60, 300)).astype(np.int8)
    queries = np.where(rng.random((5, 300)) < 0.15, rng.integers(0, 2, size=(5, 300)), -1).astype(np.int8)
    queries[:, 200:] = np.where(queries[:, 200:] >= 0, ref[7, 200:], -1)  # ties and a clear winner on the right
    exclude = np.array([[0, 1], [2, 3], [-1, -1], [7, -1], [10, 11]])
    found = local_nearest(ref, queries, 4, block=50, flank=6, exclude=exclude)
    seen = np.flatnonzero((queries >= 0).any(axis=0))
    assert found.shape == (5, 6 * 4)
    for j, start in enumerate(range(0, 300, 50)):
        lo = max(0, int(np.searchsorted(seen, start)) - 6)
        columns = seen[lo:int(np.searchsorted(seen, start + 50)) + 6]
        expected, _ = WindowIndex(ref[:, columns], backend="torch").search(queries[:, columns], 4, exclude=exclude)
        np.testing.assert_array_equal(found[:, 4 * j:4 * j + 4], expected)
    assert all(7 in found[b, -4:] for b in (0, 1, 2, 4)) and 7 not in found[3]
