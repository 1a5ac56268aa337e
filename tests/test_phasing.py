"""Phasing of unphased targets: the pair model against brute-force enumeration, exact recovery of panel pairs,
phased calls kept, and the CLI path from an unphased VCF (`ragprep unphase`) to a phased imputed VCF."""

from __future__ import annotations

import itertools

import cyvcf2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ragprep.cli import app as prep_app
from ragtrain.cli import app as train_app
from ragtrain.evaluate import read_imputed, read_truth, switch_errors
from ragtrain.hmm import switch_probabilities
from ragtrain.phasing import PhasingOptions, _decode, phase, segments


def unphased_pairs(panel: np.ndarray, pairs: list[tuple[int | np.ndarray, int]], seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Genotypes [T, N, 2] of samples made of two panel haplotypes each (or a given first haplotype), the
    heterozygotes' alleles shuffled, and the true first haplotypes [T, N]."""
    truth = np.stack([np.stack([panel[a] if np.ndim(a) == 0 else a, panel[b]], axis=1) for a, b in pairs],
                     axis=1).astype(np.int8)
    calls = truth.copy()
    flip = np.random.default_rng(seed).random(calls.shape[:2]) < 0.5
    calls[flip] = calls[flip][:, ::-1]
    return calls, truth[..., 0]


def count_switches(phased: np.ndarray, truth_first: np.ndarray, het: np.ndarray) -> int:
    errors = 0
    for sample in range(het.shape[1]):
        same = phased[het[:, sample], sample, 0] == truth_first[het[:, sample], sample]
        errors += int((same[1:] != same[:-1]).sum())
    return errors


@pytest.mark.parametrize("options", [PhasingOptions(), PhasingOptions(chunk=120, overlap=40, step=16, context=64)],
                         ids=["one chunk", "chunks joined"])
def test_samples_made_of_panel_haplotypes_are_phased_exactly(options):
    """A sample whose two haplotypes are panel haplotypes (or a mosaic of two, switching once) is phased without
    a switch error, in one chunk or in chunks joined at their overlaps."""
    rng = np.random.default_rng(3)
    panel = (rng.random((60, 400)) < 0.3).astype(np.int8)
    mosaic = np.concatenate([panel[20, :200], panel[41, 200:]])  # a recombinant first haplotype
    calls, first = unphased_pairs(panel, [(mosaic, 1)] + [(2 * i, 2 * i + 1) for i in range(1, 8)], seed=4)
    het = calls[..., 0] != calls[..., 1]
    cm = np.linspace(0.0, 0.2, 400)  # 0.5 kb a site at 1 cM/Mb
    phased = phase(calls, het, panel, cm, options)
    assert (phased.sum(axis=2) == calls.sum(axis=2)).all()  # the genotypes themselves are kept
    assert count_switches(phased, first, het) == 0
    assert len(segments(400, options.chunk, options.overlap)) == (1 if options.chunk >= 400 else 5)


def test_phased_homozygous_and_missing_calls_come_back_as_given():
    rng = np.random.default_rng(5)
    panel = (rng.random((30, 120)) < 0.4).astype(np.int8)
    calls, _ = unphased_pairs(panel, [(0, 1), (2, 3), (4, 5)], seed=6)
    calls[10, 1] = -1  # a missing call
    calls[11, 2] = [0, -1]  # half missing: missing
    het = (calls[..., 0] != calls[..., 1]) & (calls >= 0).all(axis=2)
    loose = het.copy()
    loose[::3, 1] = False  # sample 1 partly phased: every third heterozygote phased as given
    out = phase(calls, loose, panel, np.linspace(0, 1, 120))
    keep = ~loose
    keep[11, 2] = False
    assert (out[keep] == calls[keep]).all()
    assert (out[10, 1] == -1).all() and (out[11, 2] == -1).all()
    assert (out[loose].sum(axis=1) == 1).all()


def brute_force_same_orientation(alleles: np.ndarray, calls: np.ndarray, loose: np.ndarray, r: np.ndarray,
                                 k: int, eps: float) -> list[bool | None]:
    """For one sample: at each unphased heterozygote after the first, whether P(same orientation as at the
    previous one) > 1/2 (None: a tie, where the calls say nothing), by enumerating every path of state pairs and
    every orientation. alleles [T, 2, K]."""
    n = calls.shape[0]
    hets = [t for t in range(n) if loose[t]]
    weight = {}
    def fit(allele: int, state: int) -> float:
        return 1 - eps if allele == state else eps

    for path in itertools.product(range(k * k), repeat=n):
        prior = 1.0 / (k * k)
        for t in range(1, n):
            (c0, d0), (c1, d1) = divmod(path[t - 1], k), divmod(path[t], k)
            prior *= ((1 - r[t - 1]) * (c0 == c1) + r[t - 1] / k) * ((1 - r[t - 1]) * (d0 == d1) + r[t - 1] / k)
        for flips in itertools.product((0, 1), repeat=len(hets)):
            p = prior
            for t in range(n):
                c, d = divmod(path[t], k)
                one, two = calls[t]
                if t in hets:
                    one = 1 if flips[hets.index(t)] == 0 else 0  # orientation 0: ALT on the first haplotype
                    two = 1 - one
                p *= fit(one, alleles[t, 0, c]) * fit(two, alleles[t, 1, d])
            weight[flips] = weight.get(flips, 0.0) + p
    decisions = []
    for i in range(1, len(hets)):
        same = sum(w for flips, w in weight.items() if flips[i] == flips[i - 1]) / sum(weight.values())
        decisions.append(None if abs(same - 0.5) < 1e-6 else same > 0.5)
    return decisions


@pytest.mark.parametrize("seed", range(4))
def test_pair_model_orientations_equal_brute_force_enumeration(seed):
    """`_decode`'s choice at each unphased heterozygote (same orientation as the previous one, or swapped) is the
    more probable one under the pair model, as enumeration of every path and phase finds it."""
    rng = np.random.default_rng(seed)
    k, n, b = 2, 5, 3
    panel = rng.integers(0, 2, (4, n)).astype(np.int8)
    states = torch.tensor([[[0, 1], [2, 3]]] * b)  # [B, 2, K]: each haplotype's own two states
    calls = rng.integers(0, 2, (n, b, 2)).astype(np.int8)
    calls[:, :, 1] = np.where(rng.random((n, b)) < 0.6, 1 - calls[:, :, 0], calls[:, :, 1])  # mostly heterozygous
    loose = calls[..., 0] != calls[..., 1]
    cm = np.sort(rng.random(n)) * 0.05  # switch probabilities 0.02-0.7 between sites
    options = PhasingOptions(ne=2_000.0, mismatch=0.05)
    out = _decode(torch.as_tensor(panel), [(slice(0, n), states)], torch.as_tensor(calls), torch.as_tensor(loose),
                  torch.as_tensor(cm), options).numpy()
    r = switch_probabilities(cm, options.ne, k)
    alleles = panel[states[0].numpy()].transpose(2, 0, 1)  # [T, 2, K]
    compared = 0
    for sample in range(b):
        hets = np.flatnonzero(loose[:, sample])
        expected = brute_force_same_orientation(alleles, calls[:, sample], loose[:, sample], r, k, options.mismatch)
        found = [bool(out[hets[i], sample, 0] == out[hets[i - 1], sample, 0]) for i in range(1, hets.size)]
        decided = [i for i, choice in enumerate(expected) if choice is not None]
        assert [found[i] for i in decided] == [expected[i] for i in decided]
        compared += len(decided)
    assert compared > 0


def test_unphased_array_target_through_the_clis(tmp_path, panel_vcf, store_path):
    """What an array user does: `ragprep unphase` a phased target (as a lab hands genotypes over), then
    `ragtrain impute --model copying`: phased GT out, the same genotypes at the typed sites, and a switch error
    at them (`evaluate`'s) far below the 50 % of random phase."""
    from tests.conftest import subset

    target = subset(panel_vcf, tmp_path / "target.vcf.gz", every=2, samples=10)
    unphased = tmp_path / "unphased.vcf.gz"
    result = CliRunner().invoke(prep_app, ["unphase", str(target), "--out", str(unphased), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "unphased.vcf.gz.tbi").exists()
    records = list(cyvcf2.VCF(str(unphased)))
    assert not any(rec.genotype.array()[:, -1].any() for rec in records)  # every call unphased
    out = tmp_path / "imputed.vcf.gz"
    result = CliRunner().invoke(train_app, ["impute", str(unphased), "--store", store_path, "--model", "copying",
                                            "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "phased 10 samples" in result.output
    given = {(rec.POS, rec.ALT[0]): np.sort(rec.genotype.array()[:, :2], axis=1) for rec in records
             if len(rec.ALT) == 1}
    compared = 0
    for rec in cyvcf2.VCF(str(out)):
        gt = rec.genotype.array()
        assert gt[:, -1].all()  # phased GT everywhere
        if not rec.INFO.get("IMP") and (rec.POS, rec.ALT[0]) in given:
            assert (np.sort(gt[:, :2], axis=1) == given[rec.POS, rec.ALT[0]]).all()
            compared += 1
    assert compared > 0.9 * len(records)
    imputed, truth = read_imputed(str(out)), read_truth(str(target))
    errors, pairs = switch_errors(imputed, truth)
    assert pairs > 100 and errors / pairs < 0.25, (errors, pairs)


def test_a_sample_in_the_panel_never_copies_itself():
    """With `owner`, a sample's own panel haplotypes are no states: a sample that only they explain (the rest of
    the panel unrelated) is phased no better than by chance; without, exactly."""
    rng = np.random.default_rng(8)
    panel = (rng.random((40, 300)) < 0.4).astype(np.int8)
    calls, first = unphased_pairs(panel, [(0, 1)], seed=9)
    het = calls[..., 0] != calls[..., 1]
    cm = np.linspace(0.0, 0.1, 300)
    assert count_switches(phase(calls, het, panel, cm), first, het) == 0
    errors = count_switches(phase(calls, het, panel, cm, owner=np.array([0])), first, het)
    assert errors > 0.2 * (het.sum() - 1)


def test_a_split_multiallelic_record_is_written_back_joined_on_request(tmp_path, panel_vcf, store_path):
    """`impute --multiallelic-out joined`: the sites a multiallelic panel record was split into come back as one
    record (ALT a list, DS one value an ALT, GP one a genotype summing to 1), every other record as split."""
    from tests.conftest import subset

    target = subset(panel_vcf, tmp_path / "target.vcf.gz", every=3, samples=6)
    outputs = {}
    for mode in ("split", "joined"):
        outputs[mode] = tmp_path / f"{mode}.vcf.gz"
        result = CliRunner().invoke(train_app, ["impute", str(target), "--store", store_path, "--model", "copying",
                                                "--out", str(outputs[mode]), "--device", "cpu",
                                                "--multiallelic-out", mode])
        assert result.exit_code == 0, result.output
    split = {(rec.POS, rec.ALT[0]): rec.format("DS")[:, 0] for rec in cyvcf2.VCF(str(outputs["split"]))}
    joined = list(cyvcf2.VCF(str(outputs["joined"])))
    multi = [rec for rec in joined if len(rec.ALT) > 1]
    assert multi and len(joined) == len(split) - sum(len(rec.ALT) - 1 for rec in multi)
    for rec in multi:
        ds, gp = rec.format("DS"), rec.format("GP")
        assert ds.shape[1] == len(rec.ALT) and gp.shape[1] == (len(rec.ALT) + 1) * (len(rec.ALT) + 2) // 2
        np.testing.assert_allclose(gp.sum(axis=1), 1.0, atol=0.01)
        for number, alt in enumerate(rec.ALT):  # each ALT's dose as the split record's (unless rescaled)
            assert (ds[:, number] <= split[rec.POS, alt] + 0.002).all()
        assert rec.genotype.array()[:, :2].max() <= len(rec.ALT)
