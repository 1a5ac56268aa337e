"""End to end on a small simulated split: encode -> fit -> impute -> evaluate, as a user runs it."""

from __future__ import annotations

import gzip
import math
from dataclasses import replace

import cyvcf2
import numpy as np
import pytest
from typer.testing import CliRunner

from ragprep.encode import encode
from ragprep.simulate import simulate_split
from ragtrain.cli import app
from ragtrain.evaluate import read_imputed, read_truth
from ragtrain.fit import FitOptions, fit
from ragtrain.impute import impute
from ragtrain.metrics import MAF_BINS, summarise
from ragtrain.retrieval import RetrievalSpec
from stores import open_store
from tests.conftest import TINY, tiny_options


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """Panel of 100 samples; 20 held out, typed at every 2nd common site; store, trained model, imputed VCF."""
    root = tmp_path_factory.mktemp("split")
    paths = simulate_split(root / "panel.vcf.gz", samples=100, holdout=20, length=1e5, seed=11, array_every=2)
    store = str(root / "store.zarr")
    encode(str(paths["panel"]), store, tiny_options(config=replace(TINY, window=64), stride=56))
    fit(FitOptions(store=store, out=str(root / "run"), device="cpu", batch_size=16, max_steps=60, eval_every=60,
                   warmup=5, lr=3e-3, retrieval=RetrievalSpec(k=8), seed=2, mask="array:2:0.05", val_mask="array:2:0.05"))
    out = root / "imputed.vcf.gz"
    impute(str(paths["target"]), store, str(root / "run" / "best.pt"), str(out), device="cpu")
    return {**paths, "store": store, "imputed": out, "root": root}


def test_imputed_vcf_covers_every_panel_site_once_and_keeps_typed_genotypes(split):
    store = open_store(split["store"])
    records = list(cyvcf2.VCF(str(split["imputed"])))
    positions = np.array([r.POS for r in records])
    assert np.array_equal(positions, store.positions)  # sorted, every panel site once
    target = {r.POS: r.genotype.array()[:, :2] for r in cyvcf2.VCF(str(split["target"]))}
    typed = [r for r in records if not r.INFO.get("IMP")]
    assert typed and all(r.POS in target for r in typed)
    for record in typed:
        assert np.array_equal(record.genotype.array()[:, :2], target[record.POS])
    for record in records[:50]:
        ds, gp = record.format("DS")[:, 0], record.format("GP")
        assert np.allclose(ds, gp[:, 1] + 2 * gp[:, 2], atol=2e-3)
        assert np.allclose(gp.sum(axis=1), 1, atol=2e-3)


def test_imputation_beats_allele_frequency_dosage_in_common_bins(split):
    """In every MAF bin >= 1 %, imputed dosage r2 exceeds that of the panel-AF-as-dosage baseline."""
    imputed = read_imputed(str(split["imputed"]))
    truth = read_truth(str(split["truth"]))
    store = open_store(split["store"])
    pos_index = {int(p): i for i, p in enumerate(store.positions)}
    site_rows = np.array([pos_index[int(key[1])] for key in imputed.keys])
    truth_rows = np.array([truth.index[key] for key in imputed.keys])
    sample_cols = [list(truth.sample_ids).index(s) for s in imputed.sample_ids]
    true_counts = truth.counts[truth_rows][:, sample_cols].astype(float)
    true_counts[true_counts < 0] = np.nan
    af = store.af[site_rows].astype(float)
    maf = np.minimum(af, 1 - af)
    ours = summarise(imputed.dosage, true_counts, maf, af=af)
    baseline = summarise(np.repeat(2 * af[:, None], true_counts.shape[1], axis=1), true_counts, maf, af=af)
    for bin_ours, bin_base, (low, _) in zip(ours, baseline, MAF_BINS):
        if low >= 0.01 and bin_ours["n_sites"] > 0:
            base = 0.0 if math.isnan(bin_base["r2"]) else bin_base["r2"]
            assert bin_ours["r2"] > base + 0.05, (bin_ours, bin_base)


def test_cli_evaluate_writes_report(split):
    out = split["root"] / "report"
    result = CliRunner().invoke(app, ["evaluate", str(split["imputed"]), "--truth", str(split["truth"]),
                                      "--store", split["store"], "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report.md").exists() and (out / "r2_by_maf.png").stat().st_size > 0


def test_cli_impute_refuses_checkpoint_of_another_store(split, panel_vcf, store_path, tmp_path):
    result = CliRunner().invoke(app, ["impute", str(split["target"]), "--store", store_path, "--model",
                                      str(split["root"] / "run" / "best.pt"), "--out", str(tmp_path / "x.vcf.gz"),
                                      "--device", "cpu"])
    assert result.exit_code == 2 and "fix:" in result.output
    assert not (tmp_path / "x.vcf.gz").exists()


def test_average_and_core_stitching_differ_only_in_overlaps(split, tmp_path):
    paths = {stitch: tmp_path / f"{stitch}.vcf.gz" for stitch in ("core", "average")}
    for stitch, out in paths.items():
        impute(str(split["target"]), split["store"], str(split["root"] / "run" / "best.pt"), str(out),
               device="cpu", stitch=stitch)
    core = read_imputed(str(paths["core"]), all_sites=True).dosage
    average = read_imputed(str(paths["average"]), all_sites=True).dosage
    assert core.shape == average.shape
    store = open_store(split["store"])
    first_overlap = int(store.plan.starts[1])
    assert np.allclose(core[:first_overlap], average[:first_overlap], atol=2e-3)


@pytest.mark.parametrize(("batch_size", "workers"), [(7, 0), (7, 2)])
def test_output_does_not_depend_on_how_queries_are_batched(split, tmp_path, batch_size, workers):
    """Record for record the same VCF whatever the batch, built in a thread or in worker processes: each
    query's copying model, neighbours and network pass are its own (and the store's decoded chunks, kept
    between a window's batches, are the same)."""
    out = tmp_path / "batched.vcf.gz"
    report = impute(str(split["target"]), split["store"], str(split["root"] / "run" / "best.pt"), str(out),
                    device="cpu", batch_size=batch_size, workers=workers)
    with gzip.open(out, "rt") as batched, gzip.open(split["imputed"], "rt") as default:
        assert batched.read() == default.read()
    assert report.stages["copying model"] > 0 and report.stages["network"] > 0


def test_cli_imputes_with_the_copying_model_alone(split, tmp_path):
    """`--model copying` needs no fit: every panel site once, typed genotypes kept, and imputed dosages as good as
    the trained model's (whose untrained prior is this very P(ALT)) within 0.05 r2 over the untyped sites."""
    out = tmp_path / "copying.vcf.gz"
    result = CliRunner().invoke(app, ["impute", str(split["target"]), "--store", split["store"], "--model", "copying",
                                      "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "copying model" in result.output
    store = open_store(split["store"])
    copying, trained = read_imputed(str(out)), read_imputed(str(split["imputed"]))
    assert copying.keys == trained.keys and len(copying.keys) < store.plan.n_sites  # the untyped sites
    truth = read_truth(str(split["truth"]))
    rows = np.array([truth.index[key] for key in copying.keys])
    cols = [list(truth.sample_ids).index(s) for s in copying.sample_ids]
    counts = truth.counts[rows][:, cols].astype(float)
    known = counts >= 0
    r2 = {name: np.corrcoef(found.dosage[known], counts[known])[0, 1] ** 2
          for name, found in (("copying", copying), ("trained", trained))}
    assert r2["copying"] > 0.5 and abs(r2["copying"] - r2["trained"]) < 0.05, r2
    typed = {r.POS: r.genotype.array()[:, :2] for r in cyvcf2.VCF(str(split["target"]))}
    for record in cyvcf2.VCF(str(out)):
        if not record.INFO.get("IMP"):
            assert np.array_equal(record.genotype.array()[:, :2], typed[record.POS])
