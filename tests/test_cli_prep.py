"""The `ragprep` CLI: help with examples; every bad input ends in one `error:` line, exit 2 and no store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CLI, good_records, stray_entries, vcf_record, write_vcf_text
from cyvcf2 import VCF
from typer.testing import CliRunner

from ragprep.cli import app
from stores import open_store

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread is fastest


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("command", [[], ["encode"], ["simulate"], ["inspect"]])
def test_help_shows_an_example(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example: ragprep " in result.output


def test_no_arguments_prints_help():
    result = invoke()
    assert "Usage:" in result.output and "encode" in result.output


# --- bad input ------------------------------------------------------------------------------------------

def before_and_after(bad: str, at: int = 400) -> list[str]:
    return good_records(range(100, at, 100)) + [bad] + good_records(range(at + 100, at + 400, 100))


def eight_columns(record: str) -> str:
    return "\t".join(record.split("\t")[:8])


# name: (records, samples, extra CLI args, what the error line must contain besides the file and "; fix: ")
BAD = {
    "unphased": (before_and_after(vcf_record(400, "0|1", "0/1", "1|1")), None, [],
                 ["chr1:400: sample S2 is unphased", "fix: phase"]),
    "missing": (before_and_after(vcf_record(400, "0|1", "1|1", "./.")), None, [],
                ["chr1:400: sample S3 has a missing allele", "fix: impute and phase"]),
    "triploid": (before_and_after(vcf_record(400, "0|1", "1|0|1", "1|1")), None, [],
                 ["chr1:400: sample S2 has ploidy 3; ragsnv reads haploid and diploid calls",
                  "fix: keep haploid and diploid"]),
    "unsorted": (good_records(range(100, 400, 100)) + good_records([250, 500]), None, [],
                 ["chr1:250: records are not sorted (this one follows chr1:300)", "bcftools sort"]),
    "duplicate": (good_records(range(100, 400, 100)) + good_records([300, 500]), None, [],
                  ["chr1:300: duplicate record (a second A/G at the same position)", "bcftools norm"]),
    "no_samples": ([eight_columns(r) for r in good_records()], (), [], ["the panel has no samples"]),
    "no_records": ([], None, [], ["the panel has no biallelic records"]),
    "empty_region": (good_records(), None, ["--region", "chr1:5000-6000"],
                     ["no biallelic records in region chr1:5000-6000", "--region"]),
    "multiallelic": (before_and_after(vcf_record(400, "0|1", "0|2", "1|1", alt="G,T")), None,
                     ["--multiallelic", "error"],
                     ["chr1:400: multiallelic record (ALT G,T)", "--multiallelic split"]),
    "no_alt": (before_and_after(vcf_record(400, "0|0", "0|0", "0|0", alt=".")), None, [],
               ["chr1:400: record without an ALT allele", "bcftools view -m2 -M2"]),
}


def assert_one_error_line(stderr: str, path: Path, expected: list[str]) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    line = errors[0]
    assert line.startswith(f"error: {path}: ") and "; fix: " in line, line
    for text in expected:
        assert text in line, line
    return line


def assert_no_store(out: Path) -> None:
    assert not out.exists(), "a failed encode left a store behind"
    assert not stray_entries(out.parent)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_vcf_fails_on_one_line_without_a_store(tmp_path, name):
    records, samples, extra, expected = BAD[name]
    given = {} if samples is None else {"samples": samples}
    path = write_vcf_text(tmp_path / f"{name}.vcf.gz", records, **given)
    out = tmp_path / "store.zarr"
    result = invoke("encode", path, "--out", out, *TINY_CLI, *extra)
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr  # nothing but the error line
    assert_one_error_line(result.stderr, path, expected)
    assert_no_store(out)


def test_not_a_vcf(tmp_path):
    path = tmp_path / "notes.vcf.gz"
    path.write_text("these are my notes\nnot a VCF\n")
    out = tmp_path / "store.zarr"
    result = invoke("encode", path, "--out", out, *TINY_CLI)
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, path, ["not a readable VCF/BCF", "fix: check the path"])
    assert_no_store(out)
    missing = tmp_path / "absent.vcf.gz"
    result = invoke("encode", missing, "--out", out, *TINY_CLI)
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, missing, ["not a readable VCF/BCF"])
    assert_no_store(out)


def test_truncated_bgzip_in_a_subprocess(panel_vcf, tmp_path):
    """htslib prints its own [E::...]/[W::...] lines to stderr; our `error:` line must be there as well."""
    data = Path(panel_vcf).read_bytes()
    path = tmp_path / "truncated.vcf.gz"
    path.write_bytes(data[: len(data) - 100])  # the last data block is cut short
    out = tmp_path / "store.zarr"
    command = [sys.executable, "-m", "ragprep.cli", "encode", str(path), "--out", str(out), *TINY_CLI]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert_one_error_line(result.stderr, path, ["the file breaks after record chr22:", "truncated"])
    assert_no_store(out)


def test_multiallelic_records_are_skipped_counted_and_named(tmp_path):
    records = good_records(range(100, 1000, 100))
    for pos in (150, 250, 350, 450):
        records.append(vcf_record(pos, "0|1", "0|2", "1|1", alt="G,T"))
    path = write_vcf_text(tmp_path / "multi.vcf.gz", sorted(records, key=lambda r: int(r.split("\t")[1])))
    out = tmp_path / "store.zarr"
    result = invoke("encode", path, "--out", out, "--multiallelic", "skip", *TINY_CLI)
    assert result.exit_code == 0, result.output
    summary = [line for line in result.stderr.splitlines() if line.startswith(f"{path}: ")]
    assert summary == [(f"{path}: 3 samples (6 haplotypes), 9 biallelic sites on chr1 (100-900); "
                        "skipped 4 multiallelic records (first: chr1:150, chr1:250, chr1:350)")]
    store = open_store(str(out))
    assert store.positions.tolist() == list(range(100, 1000, 100))


def test_multiallelic_records_are_split_by_default(tmp_path):
    """`encode` splits a multiallelic record as `bcftools norm -m -` does: one site an ALT allele at the same
    position, that ALT 1 and every other allele 0; a second record with the same REF/ALT is refused."""
    records = good_records(range(100, 1000, 100)) + [vcf_record(450, "0|1", "2|0", "1|2", alt="G,T")]
    path = write_vcf_text(tmp_path / "multi.vcf.gz", sorted(records, key=lambda r: int(r.split("\t")[1])))
    out = tmp_path / "store.zarr"
    result = invoke("encode", path, "--out", out, *TINY_CLI)
    assert result.exit_code == 0, result.output
    assert "split 1 multiallelic records into biallelic sites" in result.stderr
    store = open_store(str(out))
    at = np.flatnonzero(store.positions == 450)
    assert store.positions.size == 11 and at.size == 2
    assert store.alleles_ref_alt[at].tolist() == [["A", "G"], ["A", "T"]]
    alleles = store.alleles(slice(int(at[0]), int(at[1]) + 1))  # [haplotypes, 2 sites]
    assert alleles[:, 0].tolist() == [0, 1, 0, 0, 1, 0] and alleles[:, 1].tolist() == [0, 0, 1, 0, 0, 1]
    again = write_vcf_text(tmp_path / "twice.vcf.gz", sorted(records + [vcf_record(450, "0|1", "0|0", "1|1", alt="T")],
                                                              key=lambda r: int(r.split("\t")[1])))
    result = invoke("encode", again, "--out", tmp_path / "s2.zarr", *TINY_CLI)
    assert result.exit_code == 2 and "duplicate record (a second A/T at the same position)" in result.stderr


def test_region_picks_one_contig(tmp_path):
    records = good_records() + good_records(range(1000, 1500, 100), chrom="chr2")
    path = write_vcf_text(tmp_path / "two.vcf.gz", records, index=True)
    out = tmp_path / "chr2.zarr"
    result = invoke("encode", path, "--out", out, "--region", "chr2", *TINY_CLI)
    assert result.exit_code == 0, result.output
    store = open_store(str(out))
    assert store.contig == "chr2" and store.positions.tolist() == [1000, 1100, 1200, 1300, 1400]
    assert store.meta.region == "chr2"


@pytest.mark.parametrize(("args", "start"), [
    (["--shard", "2/2"], "error: --shard: '2/2' needs 0 <= i < n"),
    (["--shard", "one"], "error: --shard: cannot read 'one'"),
    (["--region", "chr1:x-y"], "error: --region: cannot parse region"),
])
def test_bad_options(panel_vcf, tmp_path, args, start):
    out = tmp_path / "store.zarr"
    result = invoke("encode", panel_vcf, "--out", out, *TINY_CLI, *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(start) and result.stderr.count("\n") == 1, result.stderr
    assert_no_store(out)


def test_inspect_missing_store(tmp_path):
    result = invoke("inspect", tmp_path / "nothing.zarr")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {tmp_path / 'nothing.zarr'}: no ragsnv store there; fix: ")


# --- simulate -> encode ---------------------------------------------------------------------------------

def test_simulate_then_encode(tmp_path):
    first, second = tmp_path / "a.vcf.gz", tmp_path / "b.vcf.gz"
    for path in (first, second):
        result = invoke("simulate", "--out", path, "--samples", "8", "--length", "2e4", "--seed", "5",
                        "--model", "constant", "--contig", "chr7")
        assert result.exit_code == 0, result.output
    assert first.read_bytes() == second.read_bytes()  # one seed, one file
    assert Path(f"{first}.tbi").exists()
    vcf = VCF(str(first))
    assert len(vcf.samples) == 8 and vcf.seqnames == ["chr7"]
    out = tmp_path / "store.zarr"
    result = invoke("encode", first, "--out", out, *TINY_CLI)
    assert result.exit_code == 0, result.output
    info = json.loads(invoke("inspect", out, "--json").stdout)
    assert info["complete"] and info["contig"] == "chr7" and info["haplotypes"] == 16


def test_simulate_holds_out_one_population(tmp_path):
    """The admixed split: targets from the admixed population only, the panel from all four."""
    out = tmp_path / "admixed.vcf.gz"
    result = invoke("simulate", "--out", out, "--samples", "16", "--holdout", "3", "--length", "2e4", "--seed", "3",
                    "--model", "AmericanAdmixture_4B18", "--holdout-population", "ADMIX")
    assert result.exit_code == 0, result.output
    held = VCF(str(tmp_path / "admixed.truth.vcf.gz")).samples
    panel = VCF(str(out)).samples
    assert len(held) == 3 and all(name.startswith("ADMIX_") for name in held)
    assert {name.split("_")[0] for name in panel} == {"AFR", "EUR", "ASIA", "ADMIX"} and not set(held) & set(panel)
    result = invoke("simulate", "--out", tmp_path / "x.vcf.gz", "--samples", "8", "--holdout", "2", "--length", "2e4",
                    "--model", "AmericanAdmixture_4B18", "--holdout-population", "MARS")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --holdout-population: AmericanAdmixture_4B18 gives 0 samples of 'MARS'")
