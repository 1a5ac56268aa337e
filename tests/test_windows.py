"""The window plan covers every site, puts every site in exactly one core, and pads only the last window."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from ragprep.model import MASK, PAD
from ragprep.windows import pad_window
from stores import UserError, WindowPlan, open_store


def check_plan(plan: WindowPlan) -> None:
    n, length, starts, lengths = plan.n_sites, plan.length, plan.starts, plan.lengths
    w = plan.n_windows
    assert starts[0] == 0 and np.all(np.diff(starts) == plan.stride)
    assert np.all(lengths >= 1) and starts[-1] + lengths[-1] == n  # the last window reaches the last site
    assert np.all(lengths[:-1] == length)  # only the last window may be short (padded)
    if w > 1:
        assert starts[-2] + length < n  # no window more than needed
    in_windows = np.zeros(n, dtype=int)
    in_cores = np.zeros(n, dtype=int)
    for i in range(w):
        span = plan.sites(i)
        in_windows[span] += 1
        core = slice(int(plan.core_starts[i]), int(plan.core_ends[i]))
        assert span.start <= core.start < core.stop <= span.stop  # a non-empty core inside its window
        in_cores[core] += 1
        valid = plan.valid_mask(i)
        assert valid.shape == (length,) and valid.sum() == lengths[i] and valid[: lengths[i]].all()
    assert np.all(in_windows >= 1)
    assert np.all(in_cores == 1)
    assert WindowPlan.from_dict(plan.to_dict()) == plan


def test_plan_properties_over_many_shapes():
    rng = np.random.default_rng(0)
    cases = [(1, 1, 1), (1, 32, 24), (31, 32, 24), (32, 32, 24), (33, 32, 24), (57, 32, 24), (100, 10, 10),
             (100, 10, 1), (1030, 1030, 1020), (5000, 1030, 1020)]
    cases += [(int(rng.integers(1, 400)), length, int(rng.integers(1, length + 1)))
              for length in rng.integers(1, 80, size=300)]
    for n_sites, length, stride in cases:
        check_plan(WindowPlan(length=int(length), stride=int(stride), n_sites=int(n_sites)))


def test_short_panel_is_one_padded_window():
    plan = WindowPlan(length=32, stride=24, n_sites=20)
    assert plan.n_windows == 1 and plan.lengths.tolist() == [20]
    assert plan.valid_mask(0).tolist() == [True] * 20 + [False] * 12


@pytest.mark.parametrize(("length", "stride", "n_sites"), [(32, 0, 10), (32, 33, 10), (32, 24, 0)])
def test_bad_plans_are_refused(length, stride, n_sites):
    with pytest.raises(UserError, match="fix:"):
        WindowPlan(length=length, stride=stride, n_sites=n_sites)


def test_default_stride_overlaps_by_an_eighth():
    assert WindowPlan.for_sites(1000, 256).stride == 224
    assert WindowPlan.for_sites(1000, 256, stride=100).stride == 100
    assert WindowPlan.for_sites(10, 4).stride == 4  # 4 - 4 // 8


def test_key_span_core_and_coverage_come_from_the_plan():
    plan = WindowPlan(length=32, stride=24, n_sites=100)
    assert plan.key_span(1, 10) == slice(14, 66) and plan.key_span(0, 10) == slice(0, 42)
    assert plan.key_span(plan.n_windows - 1, 1000) == slice(0, 100)
    cores = np.concatenate([np.arange(plan.n_sites)[plan.core(w)] for w in range(plan.n_windows)])
    assert cores.tolist() == list(range(plan.n_sites))  # every site in exactly one core
    held = np.zeros(plan.n_sites, dtype=int)
    for w in range(plan.n_windows):
        held[plan.sites(w)] += 1
    np.testing.assert_array_equal(plan.coverage(), held)


def test_pad_window_tokens():
    alleles = np.array([[0, 1, -1], [1, 1, 0]], dtype=np.int8)
    tokens, af, valid = pad_window(alleles, np.array([0.5, 1.0, 0.25], dtype=np.float32), 5)
    assert tokens.tolist() == [[0, 1, MASK, PAD, PAD], [1, 1, 0, PAD, PAD]]
    assert af.tolist() == [0.5, 1.0, 0.25, 0.0, 0.0] and valid.tolist() == [True] * 3 + [False] * 2


def test_store_keeps_the_plan_and_zero_padding(store_path):
    store = open_store(store_path)
    plan = store.plan
    assert plan == WindowPlan.from_dict(store.meta.window)
    assert plan.n_sites == store.positions.size and store.n_windows == plan.n_windows > 1
    check_plan(plan)
    group = zarr.open_group(store_path, mode="r")  # the arrays other readers see say the same
    np.testing.assert_array_equal(group["window_start"][:], plan.starts)
    np.testing.assert_array_equal(group["window_length"][:], plan.lengths)
    np.testing.assert_array_equal(group["window_core_start"][:], plan.core_starts)
    np.testing.assert_array_equal(group["window_core_end"][:], plan.core_ends)
    last = plan.n_windows - 1
    assert plan.lengths[last] < plan.length  # the session panel's last window is padded
    values = store.read_window(last).values
    valid = plan.valid_mask(last)
    assert np.all(values[:, ~valid] == 0) and np.any(values[:, valid] != 0)
    np.testing.assert_array_equal(store.alleles(plan.sites(last)),
                                  store.alleles()[:, int(plan.starts[last]):plan.n_sites])


def test_a_store_whose_window_arrays_disagree_with_its_plan_is_refused(store_path, tmp_path):
    import shutil

    broken = tmp_path / "broken.zarr"
    shutil.copytree(store_path, broken)
    zarr.open_group(str(broken), mode="r+")["window_start"][1] += 1
    with pytest.raises(UserError, match="window_start disagrees with the window plan"):
        open_store(str(broken))


def test_segments_group_windows_and_a_short_last_segment_joins_the_one_before():
    plan = WindowPlan(length=256, stride=224, n_sites=24_968)  # 112 windows, 73 a segment of 16,384 sites
    assert plan.segment_windows(0, 16_384) == range(73) and plan.segment_windows(80, 16_384) == range(73, 112)
    # with an 8,192-site flank the two fit in one span no longer than any other: one segment
    assert all(plan.segment_windows(w, 16_384, 8_192) == range(112) for w in (0, 72, 73, 111))
    assert plan.key_span(100, 8_192, 16_384) == slice(0, 24_968)
    long = WindowPlan(length=256, stride=224, n_sites=200_000)
    segments = {long.segment_windows(w, 16_384, 8_192) for w in range(long.n_windows)}
    assert sorted(r.start for r in segments) == list(range(0, long.n_windows, 73))[:len(segments)]
    assert max(len(r) for r in segments) < 2 * 73 and sum(len(r) for r in segments) == long.n_windows
    spans = [long.key_span(r.start, 8_192, 16_384) for r in segments]
    assert max(s.stop - s.start for s in spans) <= 16_384 + 2 * 8_192
    assert plan.segment_windows(110, 0, 8_192) == range(110, 111)  # segment 0: each window alone
