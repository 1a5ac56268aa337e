"""Imputation metrics against hand computations: r2, concordance, MAF bins, Beagle's DR2."""

import numpy as np
import pytest

from ragtrain import metrics
from ragtrain.metrics import (
    BIN_LABELS,
    assign_bins,
    best_guess,
    dosage_r2,
    dr2_from_gp,
    dr2_from_haplotypes,
    maf_from_af,
    site_r2,
    summarise,
)


def random_truth(rng, sites: int, samples: int, af: np.ndarray) -> np.ndarray:
    """True ALT counts [sites, samples] drawn at the given ALT frequencies."""
    return rng.binomial(2, af[:, None], size=(sites, samples)).astype(np.float64)


def test_bin_labels():
    assert BIN_LABELS == ("[0, 0.005)", "[0.005, 0.01)", "[0.01, 0.05)", "[0.05, 0.5]")


def test_bins_at_the_edges():
    maf = np.array([0.0, 0.0049, 0.005, 0.0099, 0.01, 0.0499, 0.05, 0.3, 0.5, np.nan, 0.6, -0.1])
    assert assign_bins(maf).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3, -1, -1, -1]


def test_bins_of_float32_frequencies():
    # 5/1000 and 1 - 995/1000 stored as float32 sit just below 0.005: they still belong to [0.005, 0.01)
    af = np.array([5 / 1000, 995 / 1000, 10 / 1000, 50 / 1000, 500 / 1000], dtype=np.float32)
    assert assign_bins(maf_from_af(af)).tolist() == [1, 1, 2, 3, 3]


def test_perfect_dosages_give_r2_one_in_every_non_empty_bin():
    rng = np.random.default_rng(0)
    af = np.array([0.002, 0.003, 0.3, 0.6, 0.97, 0.02, 0.04])  # nothing in [0.005, 0.01)
    truth = random_truth(rng, af.size, 2000, af)
    rows = summarise(truth.copy(), truth, maf_from_af(af))
    assert [row["bin"] for row in rows] == list(BIN_LABELS)
    assert [row["n_sites"] for row in rows] == [2, 0, 3, 2]  # 0.97: MAF 0.03
    for row in rows:
        if row["n_sites"]:
            assert row["r2"] == pytest.approx(1.0)
            assert row["concordance"] == 1.0 and row["nonref_concordance"] == 1.0
        else:
            assert np.isnan(row["r2"]) and row["n_genotypes"] == 0


def test_tiny_case_by_hand():
    dosage = np.array([[0.1, 0.9, 2.0, 1.2]])
    truth = np.array([[0, 1, 2, 2]])
    # means 1.05 and 1.25; centred products sum 2.05, squares 1.85 and 2.75
    assert dosage_r2(dosage, truth) == pytest.approx(2.05**2 / (1.85 * 2.75))
    called = best_guess(dosage)  # round: 0, 1, 2, 1
    assert called.tolist() == [[0, 1, 2, 1]]
    row = summarise(dosage, truth, np.array([0.3]))[-1]
    assert row["concordance"] == pytest.approx(3 / 4)
    # non-reference: the 3 genotypes where truth or call is not 0/0; 2 of them agree
    assert row["nonref_concordance"] == pytest.approx(2 / 3) and row["n_nonref"] == 3


def test_nonref_concordance_ignores_matching_hom_ref():
    called = np.array([[0, 0, 0, 0, 0, 0, 1, 2]], dtype=np.float64)
    truth = np.array([[0, 0, 0, 0, 0, 1, 1, 1]])
    row = summarise(called, truth, np.array([0.3]))[-1]
    assert row["concordance"] == pytest.approx(6 / 8)
    assert row["nonref_concordance"] == pytest.approx(1 / 3)  # of (0,1), (1,1), (2,1)


def test_summarise_matches_pooled_corrcoef_per_bin():
    rng = np.random.default_rng(1)
    af = rng.choice([0.003, 0.007, 0.03, 0.2, 0.45, 0.9], size=60)
    truth = random_truth(rng, af.size, 400, af)
    dosage = np.clip(truth + rng.normal(0, 0.4, truth.shape), 0, 2)
    truth[3, 5] = np.nan  # a missing true genotype is left out
    maf = maf_from_af(af)
    rows = summarise(dosage, truth, maf)
    bins = assign_bins(maf)
    for b, row in enumerate(rows):
        in_bin = (bins == b)[:, None] & ~np.isnan(truth)
        x, y = dosage[in_bin], truth[in_bin]
        assert row["n_sites"] == int((bins == b).sum())
        assert row["n_genotypes"] == x.size
        assert row["r2"] == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2, rel=1e-9)
        called = np.rint(x)
        assert row["concordance"] == pytest.approx(np.mean(called == y))
        nonref = (called > 0) | (y > 0)
        assert row["nonref_concordance"] == pytest.approx(np.mean(called[nonref] == y[nonref]))
        assert row["n_nonref"] == int(nonref.sum())


def test_summarise_skips_nan_dosage_and_uses_gp_for_the_best_guess():
    truth = np.array([[0.0, 1.0, 2.0, 1.0]])
    dosage = np.array([[0.4, 1.0, 1.6, np.nan]])  # the NaN (not masked / not imputed) is left out
    gp = np.array([[[0.6, 0.4, 0.0], [0.0, 0.3, 0.7], [0.0, 0.4, 0.6], [1.0, 0.0, 0.0]]])
    rows = summarise(dosage, truth, np.array([0.3]), gp=gp, dr2=np.array([0.8]))
    last = rows[-1]
    assert last["n_genotypes"] == 3
    assert last["concordance"] == pytest.approx(2 / 3)  # argmax GP: 0, 2, 2 vs truth 0, 1, 2
    assert last["mean_dr2"] == pytest.approx(0.8)
    assert last["r2"] == pytest.approx(np.corrcoef([0.4, 1.0, 1.6], [0, 1, 2])[0, 1] ** 2)


def test_mean_dr2_per_bin():
    truth = np.zeros((3, 2))
    rows = summarise(truth, truth, np.array([0.001, 0.002, 0.2]), dr2=np.array([0.2, 0.6, 0.9]))
    assert rows[0]["mean_dr2"] == pytest.approx(0.4)
    assert rows[3]["mean_dr2"] == pytest.approx(0.9)
    assert np.isnan(rows[1]["mean_dr2"])


def test_site_r2():
    dosage = np.array([[0.0, 1.0, 2.0], [0.5, 0.5, 0.5], [0.1, 0.2, 0.3]])
    truth = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    r2 = site_r2(dosage, truth)
    assert r2[0] == pytest.approx(1.0)
    assert np.isnan(r2[1]) and np.isnan(r2[2])  # constant dosage; constant truth


def test_dr2_confident_and_correct_is_one():
    rng = np.random.default_rng(2)
    haplotypes = rng.binomial(1, 0.3, size=(5, 200)).astype(np.float64)
    assert dr2_from_haplotypes(haplotypes) == pytest.approx(np.ones(5))
    counts = haplotypes[:, 0::2] + haplotypes[:, 1::2]
    gp = np.eye(3)[counts.astype(int)]  # one-hot genotype probabilities
    assert dr2_from_gp(gp) == pytest.approx(np.ones(5))


def test_dr2_probability_equal_to_af_for_everyone_is_zero():
    af = np.array([0.01, 0.2, 0.5])
    alt_prob = np.repeat(af[:, None], 100, axis=1)
    assert dr2_from_haplotypes(alt_prob) == pytest.approx(np.zeros(3))
    hwe = np.stack([(1 - af) ** 2, 2 * af * (1 - af), af**2], axis=-1)  # the same at the genotype level
    assert dr2_from_gp(np.repeat(hwe[:, None, :], 50, axis=1)) == pytest.approx(np.zeros(3), abs=1e-12)


def test_dr2_by_hand_and_monomorphic():
    # S = 2, S2 = 0.81 + 0.01 + 0.64 + 0.04 = 1.5, H = 4: (1.5 - 1) / (2 - 1)
    assert dr2_from_haplotypes(np.array([[0.9, 0.1, 0.8, 0.2]]))[0] == pytest.approx(0.5)
    assert dr2_from_haplotypes(np.zeros((1, 10)))[0] == 0.0
    assert dr2_from_haplotypes(np.ones((1, 10)))[0] == 0.0
    assert dr2_from_gp(np.tile([1.0, 0.0, 0.0], (1, 6, 1)))[0] == 0.0
    # GP by hand: samples (0.5, 0.5, 0) and (0, 0.5, 0.5): d = 0.5, 1.5; E[x^2] = 0.5, 2.5
    # (0.25 + 2.25 - 4/2) / (3 - 4/2) = 0.5
    gp = np.array([[[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]])
    assert dr2_from_gp(gp)[0] == pytest.approx(0.5)


def test_summarise_is_fast_enough_for_training():
    rng = np.random.default_rng(3)
    af = rng.uniform(0, 1, 2000)
    truth = random_truth(rng, af.size, 500, af)
    dosage = np.clip(truth + rng.normal(0, 0.3, truth.shape), 0, 2)
    import time

    start = time.perf_counter()
    rows = summarise(dosage, truth, maf_from_af(af))
    assert time.perf_counter() - start < 2.0
    assert sum(row["n_genotypes"] for row in rows) == truth.size
    assert metrics.MAF_BINS[-1] == (0.05, 0.5)
