"""Haploid calls (chrX males outside the pseudo-autosomal region): read, encoded, imputed and written haploid."""

from __future__ import annotations

import gzip

import cyvcf2
import numpy as np
import pysam
from conftest import TINY_CLI
from typer.testing import CliRunner

from ragprep.cli import app as prep_app
from ragprep.simulate import simulate_split
from ragtrain.cli import app as train_app
from ragtrain.evaluate import read_imputed, read_truth


def as_chrx(src, out, par_end: int) -> None:
    """`src` on chrX: every other sample a male, haploid (his first allele) past `par_end`."""
    with gzip.open(src, "rt") as handle:
        lines = handle.read().replace("chr22", "chrX").splitlines()
    rows = []
    for line in lines:
        fields = line.split("\t")
        if not line.startswith("#") and int(fields[1]) > par_end:
            fields[9::2] = [call[0] for call in fields[9::2]]  # males: the first, third, ... sample
        rows.append("\t".join(fields))
    plain = out.with_suffix("")
    plain.write_text("\n".join(rows) + "\n")
    pysam.tabix_compress(str(plain), str(out), force=True)
    plain.unlink()
    pysam.tabix_index(str(out), preset="vcf", force=True)


def test_chrx_males_are_imputed_and_written_haploid_outside_the_par(tmp_path):
    """A chrX panel and target whose males are haploid past the PAR boundary: `encode` and `impute` take them;
    the output writes males haploid there (GT one allele, DS in [0, 1], GP two values, as Beagle writes them)
    at typed and imputed sites alike, diploid inside the PAR and for females; typed calls are kept, and the
    males' imputed dosages track the truth."""
    paths = simulate_split(tmp_path / "sim.vcf.gz", samples=60, holdout=10, length=5e4, seed=5, array_every=2)
    positions = [rec.POS for rec in cyvcf2.VCF(str(paths["truth"]))]
    par_end = positions[len(positions) // 5]
    files = {name: tmp_path / f"x.{name}.vcf.gz" for name in ("panel", "target", "truth")}
    for name, path in files.items():
        as_chrx(paths[name], path, par_end)
    store = tmp_path / "store.zarr"
    result = CliRunner().invoke(prep_app, ["encode", str(files["panel"]), "--out", str(store), *TINY_CLI])
    assert result.exit_code == 0, result.output
    out = tmp_path / "imputed.vcf.gz"
    result = CliRunner().invoke(train_app, ["impute", str(files["target"]), "--store", str(store), "--model", "copying",
                                            "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "5 samples with haploid calls" in result.output
    typed = {(rec.POS, rec.ALT[0]): rec.genotype.array() for rec in cyvcf2.VCF(str(files["target"]))}
    # the target's typed sites place the boundary: between the last typed one inside and the first outside,
    # a site takes the ploidy of the nearer
    last_in = max(pos for pos, _ in typed if pos <= par_end)
    first_out = min(pos for pos, _ in typed if pos > par_end)
    seen = {"haploid": 0, "diploid": 0}
    for rec in cyvcf2.VCF(str(out)):
        gt = rec.genotype.array()
        ds = rec.format("DS")[:, 0]
        gp = rec.format("GP")
        males = slice(0, None, 2)
        if rec.POS >= first_out:
            assert (gt[males, 1] == -2).all() and (gt[males, 0] >= 0).all()  # one allele
            assert (ds[males] <= 1.0).all() and np.isnan(gp[males, 2]).all()  # GP: two values
            seen["haploid"] += 1
        elif rec.POS <= last_in:
            assert (gt[males, 1] >= 0).all()
            seen["diploid"] += 1
        assert (gt[1::2, 1] >= 0).all()  # females: diploid everywhere
        if not rec.INFO.get("IMP") and (rec.POS, rec.ALT[0]) in typed:
            given = typed[rec.POS, rec.ALT[0]]
            assert (gt[:, :2] == given[:, :2]).all()
    assert seen["haploid"] > 50 and seen["diploid"] > 10
    imputed, truth = read_imputed(str(out)), read_truth(str(files["truth"]))
    rows = [truth.index[key] for key in imputed.keys]
    cols = [list(truth.sample_ids).index(s) for s in imputed.sample_ids]
    true = truth.counts[np.ix_(rows, cols)].astype(float)
    haploid = np.array([key[1] > par_end for key in imputed.keys])
    male_true, male_ds = true[haploid][:, 0::2], imputed.dosage[haploid][:, 0::2]
    assert male_true.max() <= 1 and male_ds.max() <= 1.0
    assert np.corrcoef(male_true.ravel(), male_ds.ravel())[0, 1] ** 2 > 0.5
