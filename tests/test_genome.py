"""A genome in one go: a two-contig panel encoded into a genome folder, one model a contig, one imputed VCF."""

from __future__ import annotations

import gzip

import pysam
from conftest import TINY_CLI
from typer.testing import CliRunner

from ragprep.cli import app as prep_app
from ragprep.simulate import simulate_split
from ragtrain.cli import app as train_app
from stores.genome import contig_stores


def merged(parts: list, out):
    """The records of single-contig VCFs (same samples) as one file, every ##contig line in its header."""
    texts = [lines(part) for part in parts]
    header = [line for line in texts[0] if line.startswith("#") and not line.startswith(("##contig", "#CHROM"))]
    contigs = [line for text in texts for line in text if line.startswith("##contig")]
    columns = [line for line in texts[0] if line.startswith("#CHROM")]
    records = [line for text in texts for line in text if not line.startswith("#")]
    plain = out.with_suffix("")
    plain.write_text("\n".join(header + contigs + columns + records) + "\n")
    pysam.tabix_compress(str(plain), str(out), force=True)
    plain.unlink()
    pysam.tabix_index(str(out), preset="vcf", force=True)
    return out


def lines(path) -> list[str]:
    with gzip.open(path, "rt") as handle:
        return handle.read().splitlines()


def body(path) -> list[str]:
    return [line for line in lines(path) if not line.startswith("#")]


def test_two_contigs_encode_fit_impute_evaluate_in_one_go(tmp_path):
    runner = CliRunner()
    splits = [simulate_split(tmp_path / f"{contig}.vcf.gz", samples=40, holdout=6, length=3e4, seed=seed,
                             contig=contig, array_every=3) for seed, contig in ((7, "chr1"), (8, "chr2"))]
    files = {name: merged([split[name] for split in splits], tmp_path / f"genome.{name}.vcf.gz")
             for name in ("panel", "target", "truth")}
    genome = tmp_path / "genome"
    result = runner.invoke(prep_app, ["encode", str(files["panel"]), "--out", str(genome), *TINY_CLI])
    assert result.exit_code == 0, result.output
    assert "contig chr2 (2 of 2)" in result.output
    stores = contig_stores(genome)
    assert list(stores) == ["chr1", "chr2"]
    result = runner.invoke(prep_app, ["encode", str(files["panel"]), "--out", stores["chr1"], *TINY_CLI])
    assert result.exit_code == 2 and "is a store of one contig" in result.output  # never mixed into a store
    runs = tmp_path / "runs"
    result = runner.invoke(train_app, ["fit", "--store", str(genome), "--out", str(runs), "--targets",
                                       str(files["target"]), "--max-steps", "2", "--eval-every", "2",
                                       "--batch-size", "8", "--device", "cpu", "--k", "4"])
    assert result.exit_code == 0, result.output
    assert (runs / "chr1" / "best.pt").is_file() and (runs / "chr2" / "best.pt").is_file()
    out = tmp_path / "imputed.vcf.gz"
    result = runner.invoke(train_app, ["impute", str(files["target"]), "--store", str(genome), "--model", str(runs),
                                       "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "imputed.vcf.gz.tbi").is_file()
    assert not list(tmp_path.glob(".imputed*"))  # no part left behind
    header = [line for line in lines(out) if line.startswith("##contig")]
    assert [line.split(",")[0] for line in header] == ["##contig=<ID=chr1", "##contig=<ID=chr2"]
    # each contig's records are what a single-store impute of that contig writes
    alone = tmp_path / "chr2.imputed.vcf.gz"
    result = runner.invoke(train_app, ["impute", str(files["target"]), "--store", stores["chr2"], "--model",
                                       str(runs / "chr2" / "best.pt"), "--out", str(alone), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    records = body(out)
    assert [line for line in records if line.startswith("chr2\t")] == body(alone)
    assert sum(line.startswith("chr1\t") for line in records) > 100
    result = runner.invoke(train_app, ["evaluate", str(out), "--truth", str(files["truth"]), "--store", str(genome),
                                       "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert "no MAF" not in result.output  # every imputed site's frequency found in its contig's store
