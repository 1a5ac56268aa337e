"""`ragprep split`: merge phased VCFs, drop unusable samples, hold out samples; panel, truth and array target."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import vcf_record, write_vcf_text
from cyvcf2 import VCF
from typer.testing import CliRunner

from ragprep.cli import app
from ragprep.split import split_panel
from ragprep.vcf import read_panel
from stores.errors import UserError

A_SAMPLES = ("A1", "A2", "A3", "A4")
B_SAMPLES = ("B1", "B2", "B3", "B4")
POSITIONS = range(100, 1100, 100)


def calls(seed: int, pos: int, n: int) -> list[str]:
    rng = np.random.default_rng([seed, pos])
    return [f"{a}|{b}" for a, b in rng.integers(0, 2, size=(n, 2))]


@pytest.fixture
def inputs(tmp_path) -> dict[str, Path]:
    """A: 4 samples at 10 sites plus a second record at 500 (an indel) and one at 1500 that B lacks.
    B: 4 samples at the 10 sites and the indel; B2 has one unphased heterozygous call, B3 an unphased 1/1.
    Sites: 4 of the 10 sites, a SNP at a panel position with other alleles, and one at no panel position."""
    a = [vcf_record(p, *calls(1, p, 4)) for p in POSITIONS]
    a.insert(5, vcf_record(500, *calls(2, 500, 4), ref="A", alt="AT"))
    a.append(vcf_record(1500, *calls(3, 1500, 4)))
    b = [vcf_record(p, *calls(4, p, 4)) for p in POSITIONS]
    b.insert(5, vcf_record(500, *calls(5, 500, 4), ref="A", alt="AT"))
    b[2] = vcf_record(300, "0|1", "0/1", "1/1", "0|0")
    sites = [vcf_record(p, ref="A", alt=alt)[:-3].rstrip("\t") for p, alt in
             [(200, "G"), (300, "G"), (700, "G"), (1000, "G"), (400, "C"), (2000, "G")]]
    sites.append(vcf_record(600, ref="T", alt="C")[:-3].rstrip("\t"))  # A/G on the other strand: typed
    return {"a": write_vcf_text(tmp_path / "a.vcf.gz", a, A_SAMPLES, index=True),
            "b": write_vcf_text(tmp_path / "b.vcf.gz", b, B_SAMPLES, index=True),
            "sites": write_vcf_text(tmp_path / "sites.vcf.gz", sites, samples=())}


def genotypes(path: Path) -> tuple[list[str], list[tuple[int, str, str]], dict[tuple[str, int], str]]:
    """Samples, (pos, REF, ALT) of every record, and {(sample, pos): GT text} of a VCF."""
    vcf = VCF(str(path))
    samples = list(vcf.samples)
    sites, gts = [], {}
    for rec in vcf:
        sites.append((rec.POS, rec.REF, rec.ALT[0]))
        for sample, (a, b, phased) in zip(samples, rec.genotypes):
            gts[sample, rec.POS] = f"{a}{'|' if phased else '/'}{b}"
    return samples, sites, gts


def test_split_panel_truth_and_target(inputs, tmp_path):
    report = split_panel([inputs["a"], inputs["b"]], tmp_path / "out" / "panel.vcf.gz", 3, inputs["sites"], seed=2)
    assert set(report.paths) == {"panel", "truth", "target"}
    assert report.paths["truth"].name == "panel.truth.vcf.gz" and report.paths["target"].name == "panel.target.vcf.gz"
    assert all(Path(f"{p}.tbi").exists() for p in report.paths.values())

    panel_samples, panel_sites, panel_gts = genotypes(report.paths["panel"])
    truth_samples, truth_sites, truth_gts = genotypes(report.paths["truth"])
    target_samples, target_sites, target_gts = genotypes(report.paths["target"])
    usable = set(A_SAMPLES + B_SAMPLES) - {"B2"}  # B2's unphased 0/1 drops it; B3's unphased 1/1 does not
    assert report.dropped["unphased"] == ["B2"] and "B2" in report.summary()
    assert len(truth_samples) == 3 and truth_samples == target_samples == report.held_out
    assert not set(panel_samples) & set(truth_samples)
    assert set(panel_samples) | set(truth_samples) == usable and report.panel_samples == 4

    # sites: the 10 shared SNPs; the two records at 500 and A's site at 1500 (not in B) are gone
    expected = [(p, "A", "G") for p in POSITIONS if p != 500]
    assert panel_sites == truth_sites == expected and report.sites == 9
    assert report.shared_sites == 11 and report.duplicate_records == 2 and report.input_sites == [12, 11]
    assert "intersection" in report.summary()
    assert target_sites == [(p, "A", "G") for p in (200, 300, 600, 700, 1000)]
    assert (report.sites_other_alleles, report.sites_absent, report.sites_file_records) == (1, 1, 7)
    assert report.sites_swapped == 1 and "1 of them with the panel's alleles swapped or on the other strand" in report.summary()

    # truth and target: the held-out samples' own phased genotypes, B3's 1/1 written phased
    source = {**genotypes(inputs["a"])[2], **genotypes(inputs["b"])[2]}
    source["B3", 300] = "1|1"
    for sample in truth_samples:
        for pos, _, _ in truth_sites:
            assert truth_gts[sample, pos] == source[sample, pos]
        for pos, _, _ in target_sites:
            assert target_gts[sample, pos] == source[sample, pos]
    for sample in panel_samples:
        for pos, _, _ in panel_sites:
            assert panel_gts[sample, pos] == source[sample, pos]
    read_panel(str(report.paths["panel"]))  # what `ragprep encode` reads: phased, sorted, one record a position


def test_same_seed_same_files(inputs, tmp_path):
    runs = [split_panel([inputs["a"], inputs["b"]], tmp_path / name / "p.vcf.gz", 3, inputs["sites"], seed=seed)
            for name, seed in [("x", 7), ("y", 7), ("z", 8)]]
    for kind in ("panel", "truth", "target"):
        assert runs[0].paths[kind].read_bytes() == runs[1].paths[kind].read_bytes()
    assert runs[0].held_out == runs[1].held_out
    assert any(r.held_out != runs[0].held_out for r in runs[2:])


def test_bad_input_names_file_and_fix(inputs, tmp_path):
    out = tmp_path / "p.vcf.gz"
    with pytest.raises(UserError, match=r"cannot hold out 7 of 7 usable samples.*fix: give 1 <= --holdout < 7"):
        split_panel([inputs["a"], inputs["b"]], out, 7, inputs["sites"])
    copy = tmp_path / "copy.vcf.gz"
    copy.write_bytes(inputs["a"].read_bytes())
    with pytest.raises(UserError, match=r"copy\.vcf\.gz: sample A1: sample also in .*a\.vcf\.gz; fix: give each"):
        split_panel([inputs["a"], copy], out, 1, inputs["sites"])
    other = write_vcf_text(tmp_path / "other.vcf.gz", [vcf_record(100, "0|1", alt="T")], ("C1",))
    with pytest.raises(UserError, match=r"no biallelic site .* is in every input"):
        split_panel([inputs["a"], other], out, 1, inputs["sites"])
    with pytest.raises(UserError, match=r"other\.vcf\.gz: none of its 1 records is a panel site"):
        split_panel([inputs["a"]], out, 1, other)


def test_cli_split(inputs, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["split", "--help"])
    assert result.exit_code == 0 and "Example: ragprep split" in result.output
    out = tmp_path / "cli" / "panel.vcf.gz"
    args = ["split", str(inputs["a"]), str(inputs["b"]), "--out", str(out), "--sites", str(inputs["sites"])]
    result = runner.invoke(app, [*args, "--holdout", "2", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "dropped 1 sample with unphased heterozygous calls (B2)" in result.output
    assert (tmp_path / "cli" / "panel.target.vcf.gz").exists()
    result = runner.invoke(app, [*args, "--holdout", "9"])
    assert result.exit_code == 2
    assert [line for line in result.output.splitlines() if line.startswith("error: --holdout: cannot hold out 9")]
