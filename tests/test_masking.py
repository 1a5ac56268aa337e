"""Masks are pure functions of (seed, epoch, sample, window), respect padding, and do what their kind says."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from ragtrain.masking import VALIDATION_EPOCH, MaskSpec, apply_mask, mask_for
from stores.errors import UserError

SPECS = [MaskSpec.parse(s) for s in ("random:0.3-0.8", "af:0.3-0.8", "array:10:0.05", "array:3:0.2")]
AF = np.random.default_rng(0).beta(0.3, 0.6, size=256)
KEYS = [(seed, epoch, sample, window) for seed in (0, 7) for epoch in (VALIDATION_EPOCH, 0, 3)
        for sample in (0, 1, 2**40) for window in (0, 5)]


def all_masks(keys=KEYS) -> np.ndarray:
    return np.stack([mask_for(spec, *key, AF) for spec in SPECS for key in keys])


def test_parse_and_round_trip():
    assert MaskSpec.parse("random:0.3-0.8") == MaskSpec("random", lo=0.3, hi=0.8)
    assert MaskSpec.parse(" AF:.2-0.5 ") == MaskSpec("af", lo=0.2, hi=0.5)
    assert MaskSpec.parse("random:0.5") == MaskSpec("random", lo=0.5, hi=0.5)
    assert MaskSpec.parse("array:10:0.05") == MaskSpec("array", every=10, min_maf=0.05)
    assert MaskSpec.parse("array:20") == MaskSpec("array", every=20, min_maf=0.05)
    for spec in SPECS:
        assert MaskSpec.parse(str(spec)) == spec


@pytest.mark.parametrize("text, message", [
    ("", "bad mask"),
    ("uniform:0.3-0.8", "bad mask"),
    ("random", "bad mask"),
    ("random:abc", "bad mask"),
    ("random:0.3-", "bad mask"),
    ("random:0.8-0.3", "0 <= LO <= HI <= 1"),
    ("af:0.3-1.5", "0 <= LO <= HI <= 1"),
    ("array:0:0.05", "N must be >= 1"),
    ("array:10:0.7", r"MAF threshold must be in \[0, 0.5\]"),
    ("array:2.5:0.05", "bad mask"),
])
def test_bad_spec_strings_raise_one_line_user_errors(text, message):
    with pytest.raises(UserError, match=message) as err:
        MaskSpec.parse(text, option="--val-mask")
    assert "\n" not in str(err.value) and repr(text) in str(err.value)
    assert str(err.value).startswith("--val-mask: ") and "fix: write random:LO-HI" in str(err.value)


def test_masks_are_independent_of_call_order_and_global_rng():
    forward = all_masks()
    np.random.seed(123)
    np.random.random(1000)
    torch.manual_seed(99)
    torch.rand(1000)
    calls = [(spec, key) for spec in SPECS for key in KEYS]
    backward = {i: mask_for(spec, *key, AF) for i, (spec, key) in reversed(list(enumerate(calls)))}
    np.testing.assert_array_equal(forward, np.stack([backward[i] for i in range(len(calls))]))


def test_masks_are_the_same_in_another_process():
    script = (
        "import numpy as np; from ragtrain.masking import MaskSpec, mask_for\n"
        f"af = np.array({AF.tolist()!r})\n"
        f"masks = [mask_for(MaskSpec.parse(s), *key, af) for s in {[str(s) for s in SPECS]!r} for key in {KEYS!r}]\n"
        "print(np.packbits(np.stack(masks)).tobytes().hex())"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == np.packbits(all_masks()).tobytes().hex()


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_masks_differ_across_epochs_samples_windows_and_seeds(spec):
    # an array mask has only `every` phases, so it repeats; random and af masks practically never do
    expected = min(spec.every, 5) if spec.kind == "array" else 30
    for axis in range(4):
        keys = [tuple(i if a == axis else 0 for a in range(4)) for i in range(30)]
        distinct = {mask_for(spec, *key, AF).tobytes() for key in keys}
        assert len(distinct) >= expected, (axis, len(distinct))
    np.testing.assert_array_equal(mask_for(spec, 0, VALIDATION_EPOCH, 4, 2, AF),
                                  mask_for(spec, 0, VALIDATION_EPOCH, 4, 2, AF))


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_padding_never_masked_and_at_least_one_site_each_way(spec):
    for n_real in (0, 1, 2, 3, 17, 200):
        valid = np.arange(256) < n_real
        for sample in range(20):
            mask = mask_for(spec, 5, 1, sample, 3, AF, valid)
            assert mask.dtype == bool and mask.shape == (256,)
            assert not mask[~valid].any()
            if n_real >= 2:
                assert 1 <= mask.sum() <= n_real - 1
            else:
                assert not mask.any()


@pytest.mark.parametrize("af", [np.full(50, 0.5), np.zeros(50)], ids=["all-common", "all-monomorphic"])
def test_array_edge_cases_keep_the_invariants(af):
    for spec in (MaskSpec("array", every=1, min_maf=0.0), MaskSpec("array", every=10, min_maf=0.05)):
        for sample in range(10):
            mask = mask_for(spec, 0, 0, sample, 0, af)
            assert 1 <= mask.sum() <= 49


def masks_for(spec: MaskSpec, seed: int, samples: np.ndarray, af: np.ndarray) -> np.ndarray:
    """bool [samples, sites]: each sample's mask in window 0, epoch 0."""
    return np.stack([mask_for(spec, seed, 0, int(s), 0, af) for s in samples])


def test_random_mask_ratio_is_in_range():
    spec = MaskSpec.parse("random:0.3-0.8")
    ratios = masks_for(spec, 1, np.arange(300), AF).mean(axis=1)
    assert ratios.min() >= 0.3 - 1 / 512 and ratios.max() <= 0.8 + 1 / 512
    assert ratios.min() < 0.35 and ratios.max() > 0.75  # spread over the range


def test_array_mask_keeps_every_nth_common_site():
    af = np.random.default_rng(1).uniform(0, 1, size=512)
    maf = np.minimum(af, 1 - af)
    valid = np.arange(512) < 500
    common = np.flatnonzero((maf >= 0.05) & valid)
    spec = MaskSpec.parse("array:10:0.05")
    phases = set()
    for sample in range(40):
        observed = np.flatnonzero(~mask_for(spec, 2, 0, sample, 0, af, valid) & valid)
        assert np.isin(observed, common).all()  # only MAF >= 0.05 sites stay observed
        rank = np.searchsorted(common, observed)  # their ranks among the common sites
        assert (np.diff(rank) == 10).all() and rank[0] < 10
        assert len(observed) in (len(common) // 10, len(common) // 10 + 1)
        phases.add(int(rank[0]))
    assert len(phases) >= 5  # the kept subset varies across training examples


def test_af_mask_masks_rare_sites_more_often():
    af = np.tile([0.002, 0.01, 0.3, 0.5], 64)  # two rare, two common sites in each group of four
    spec = MaskSpec.parse("af:0.3-0.8")
    masks = masks_for(spec, 3, np.arange(400), af)
    rare, common = masks[:, af < 0.05].mean(), masks[:, af >= 0.05].mean()
    assert rare > common + 0.25, (rare, common)
    random_ratio = masks_for(MaskSpec.parse("random:0.3-0.8"), 3, np.arange(400), af).mean()
    assert abs(masks.mean() - random_ratio) < 0.03  # the same ratio as a random mask


def test_apply_mask_hides_masked_sites_for_both_haplotypes():
    alleles = np.array([[0, 1, 1, -1], [1, 0, 1, 0]], dtype=np.int8)
    mask = np.array([True, False, True, False])
    out = apply_mask(alleles, mask)
    assert out.dtype == np.int8
    assert out.tolist() == [[-1, 1, -1, -1], [-1, 0, -1, 0]]
    assert alleles[0, 0] == 0  # the input is untouched
