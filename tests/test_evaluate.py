"""`ragtrain evaluate` end to end on small VCFs written here: Beagle 5.4 and Minimac4 formats, a truth VCF."""

import csv
from pathlib import Path

import numpy as np
import pysam
import pytest
from typer.testing import CliRunner

from ragprep.vcf import read_panel
from ragtrain.cli import app
from ragtrain.evaluate import evaluate, read_imputed, read_truth
from ragtrain.metrics import BIN_LABELS, assign_bins, maf_from_af
from stores import open_store
from stores.errors import UserError

# Beagle 5.4 (beagle.22Jul22.46e.jar, gp=true) output header, as its VcfWriter writes it: no ##contig lines.
BEAGLE_HEADER = """##fileformat=VCFv4.2
##filedate=20240101
##source="beagle.22Jul22.46e.jar"
##INFO=<ID=AF,Number=A,Type=Float,Description="Estimated ALT Allele Frequencies">
##INFO=<ID=DR2,Number=A,Type=Float,Description="Dosage R-Squared: estimated squared correlation between estimated REF dose [P(RA) + 2*P(RR)] and true REF dose">
##INFO=<ID=IMP,Number=0,Type=Flag,Description="Imputed marker">
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
##FORMAT=<ID=DS,Number=A,Type=Float,Description="estimated ALT dose [P(RA) + 2*P(AA)]">
##FORMAT=<ID=GP,Number=G,Type=Float,Description="Estimated Genotype Probability">
"""

MINIMAC_HEADER = """##fileformat=VCFv4.1
##source=Minimac4.v1.0.2
##contig=<ID=chr22>
##INFO=<ID=AF,Number=1,Type=Float,Description="Estimated Alternate Allele Frequency">
##INFO=<ID=MAF,Number=1,Type=Float,Description="Estimated Minor Allele Frequency">
##INFO=<ID=R2,Number=1,Type=Float,Description="Estimated Imputation Accuracy (R-square)">
##INFO=<ID=IMPUTED,Number=0,Type=Flag,Description="Marker was imputed but NOT genotyped">
##INFO=<ID=TYPED,Number=0,Type=Flag,Description="Marker was genotyped AND imputed">
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
##FORMAT=<ID=DS,Number=1,Type=Float,Description="Estimated Alternate Allele Dosage : [P(0/1)+2*P(1/1)]">
"""

TRUTH_HEADER = """##fileformat=VCFv4.2
##contig=<ID=chr22,length=1000000>
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
"""

N = 120  # samples: MAF steps of 1/240, so every bin can be filled
ALT_COUNTS = [1, 2, 5, 8, 30, 100, 120, 200]  # MAF 0.004, 0.008, 0.021, 0.033, 0.125, 0.417, 0.5, 0.167
TYPED = 8  # index of the typed (not imputed) site, added after ALT_COUNTS


def write_vcf(path: Path, header: str, samples: list[str], lines: list[str]) -> str:
    """Write VCF text and bgzip it with pysam."""
    text = path.with_suffix("")
    text.write_text(header + "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT",
                                        *samples]) + "\n" + "".join(line + "\n" for line in lines))
    pysam.tabix_compress(str(text), str(path), force=True)
    return str(path)


def make_truth(seed: int = 0) -> np.ndarray:
    """Haplotypes [sites, 2N] with exactly the ALT counts above, plus a typed site at MAF 0.25."""
    rng = np.random.default_rng(seed)
    haps = np.zeros((len(ALT_COUNTS) + 1, 2 * N), dtype=int)
    for i, count in enumerate([*ALT_COUNTS, 60]):
        haps[i, rng.choice(2 * N, size=count, replace=False)] = 1
    return haps


@pytest.fixture()
def files(tmp_path):
    """Truth (samples s0..s119 plus t_only; one missing and one unphased genotype), a perfect Beagle file with
    GP, a noisy Minimac4 file; both imputed files hold an extra sample and a site that the truth lacks."""
    haps = make_truth()
    counts = haps[:, 0::2] + haps[:, 1::2]
    samples = [f"s{j}" for j in range(N)]
    truth_lines = []
    for i in range(haps.shape[0]):
        gts = [f"{haps[i, 2 * j]}|{haps[i, 2 * j + 1]}" for j in range(N)]
        if i == 2:
            gts[0] = "./."
        if i == 3:
            gts[1] = gts[1].replace("|", "/")
        truth_lines.append(f"chr22\t{1000 + 100 * i}\t.\tA\tG\t.\tPASS\t.\tGT\t" + "\t".join(gts) + "\t0|0")
    truth = write_vcf(tmp_path / "truth.vcf.gz", TRUTH_HEADER, samples + ["t_only"], truth_lines)

    beagle_lines, minimac_lines = [], []
    rng = np.random.default_rng(5)
    noisy = np.clip(counts + rng.normal(0, 0.3, counts.shape), 0, 2).round(3)
    noisy[TYPED] = 2 - counts[TYPED]  # the typed site is wrong on purpose: it must not be scored by default
    for i in range(haps.shape[0] + 1):  # + 1: a site the truth lacks
        pos = 1000 + 100 * i
        imp = i != TYPED
        if i < haps.shape[0]:
            c, d = counts[i], noisy[i]
        else:
            c, d = np.zeros(N, dtype=int), np.zeros(N)
        fields = [f"{haps[i, 2 * j]}|{haps[i, 2 * j + 1]}:{c[j]}:" + ",".join("1" if g == c[j] else "0"
                                                                            for g in range(3))
                  if i < haps.shape[0] else "0|0:0:1,0,0" for j in range(N)]
        af = c.sum() / (2 * N)
        info = f"DR2={0.9 if i < 4 else 1.0:.2f};AF={af:.4f}" + (";IMP" if imp else "")
        beagle_lines.append(f"chr22\t{pos}\t.\tA\tG\t.\tPASS\t{info}\tGT:DS:GP\t" + "\t".join(fields)
                            + "\t0|0:0:1,0,0")
        flag = "IMPUTED" if imp else "TYPED"
        mm = [f"{round(x)}|0:{x:g}" if x < 1.5 else f"1|1:{x:g}" for x in d]
        minimac_lines.append(f"chr22\t{pos}\t.\tA\tG\t.\tPASS\tAF={af:.4f};MAF={min(af, 1 - af):.4f};R2=0.7;{flag}"
                             "\tGT:DS\t" + "\t".join(mm) + "\t0|0:0")
    beagle = write_vcf(tmp_path / "beagle.vcf.gz", BEAGLE_HEADER, samples + ["x_only"], beagle_lines)
    minimac = write_vcf(tmp_path / "minimac.dose.vcf.gz", MINIMAC_HEADER, samples + ["x_only"], minimac_lines)
    return {"truth": truth, "beagle": beagle, "minimac": minimac, "counts": counts, "noisy": noisy,
            "tmp": tmp_path}


def read_csv(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_evaluate_beagle_and_minimac(files):
    out = files["tmp"] / "report"
    rows = evaluate([files["beagle"], files["minimac"]], files["truth"], str(out))
    assert {p.name for p in out.iterdir()} == {"report.csv", "report.md", "r2_by_maf.png"}
    assert (out / "r2_by_maf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(rows) == 2 * len(BIN_LABELS) and len(read_csv(out / "report.csv")) == len(rows)

    counts, noisy = files["counts"].astype(float), files["noisy"]
    counts[2, 0] = np.nan  # the missing true genotype
    scored = [i for i in range(len(ALT_COUNTS))]  # imputed sites only: the typed one is left out
    bins = assign_bins(maf_from_af(np.array(ALT_COUNTS) / (2 * N)))
    assert bins.tolist() == [0, 1, 2, 2, 3, 3, 3, 3]

    beagle = [row for row in rows if row["file"] == "beagle.vcf.gz"]
    assert [row["n_sites"] for row in beagle] == [1, 1, 2, 4]
    assert [row["n_genotypes"] for row in beagle] == [N, N, 2 * N - 1, 4 * N]  # 120 common samples
    for row in beagle:
        assert row["r2"] == pytest.approx(1.0) and row["concordance"] == 1.0
    assert [row["mean_dr2"] for row in beagle] == pytest.approx([0.9, 0.9, 0.9, 1.0])  # DR2 0.9 on the first 4 sites

    minimac = [row for row in rows if row["file"] == "minimac.dose.vcf.gz"]
    for b, row in enumerate(minimac):
        sites = [i for i in scored if bins[i] == b]
        major = np.array(ALT_COUNTS)[sites] > N  # ALT is the major allele: pooled as the minor-allele dose
        x = np.where(major[:, None], 2 - noisy[sites], noisy[sites]).ravel()
        y = np.where(major[:, None], 2 - counts[sites], counts[sites]).ravel()
        keep = ~np.isnan(y)
        assert row["r2"] == pytest.approx(np.corrcoef(x[keep], y[keep])[0, 1] ** 2, rel=1e-5)
        assert row["concordance"] == pytest.approx(np.mean(np.rint(x[keep]) == y[keep]))
        assert row["mean_dr2"] == pytest.approx(0.7)

    on_disk = read_csv(out / "report.csv")[4 + 2]
    assert on_disk["file"] == "minimac.dose.vcf.gz" and on_disk["bin"] == BIN_LABELS[2]
    assert float(on_disk["r2"]) == pytest.approx(minimac[2]["r2"], rel=1e-5)
    report = (out / "report.md").read_text()
    assert "## beagle.vcf.gz" in report and "### DR2 calibration" in report and "mean R2" in report
    assert "120 samples in common" in report


def test_all_sites_scores_the_typed_site_too(files):
    rows = evaluate([files["beagle"], files["minimac"]], files["truth"], str(files["tmp"] / "all"), all_sites=True)
    beagle_last = [row for row in rows if row["file"] == "beagle.vcf.gz"][-1]
    minimac_last = [row for row in rows if row["file"] == "minimac.dose.vcf.gz"][-1]
    assert beagle_last["n_sites"] == 5  # the typed site, MAF 0.25
    assert minimac_last["r2"] < 0.9  # its dosages are wrong


def test_maf_from_the_store(panel_vcf, store_path, tmp_path):
    """Truth = the panel; a perfect imputation of every site; MAF bins follow the store's variant_af."""
    panel = read_panel(str(panel_vcf))
    counts = panel.alleles[:, 0::2] + panel.alleles[:, 1::2]
    lines = []
    for i in range(panel.n_variants):
        fields = [f"{panel.alleles[i, 2 * j]}|{panel.alleles[i, 2 * j + 1]}:{counts[i, j]}"
                  for j in range(panel.n_samples)]
        lines.append(f"{panel.contig}\t{panel.positions[i]}\t.\t{panel.ref[i]}\t{panel.alt[i]}\t.\tPASS\t"
                     f"DR2=1.00;AF=0.1;IMP\tGT:DS\t" + "\t".join(fields))
    header = BEAGLE_HEADER.replace('##FORMAT=<ID=GP,Number=G,Type=Float,Description="Estimated Genotype Probability">\n',
                                   "")
    imputed = write_vcf(tmp_path / "perfect.vcf.gz", header, list(panel.sample_ids), lines)
    rows = evaluate([imputed], str(panel_vcf), str(tmp_path / "report"), store=store_path)
    store = open_store(store_path)
    expected = np.bincount(assign_bins(maf_from_af(store.af)), minlength=len(BIN_LABELS))
    assert [row["n_sites"] for row in rows] == expected.tolist()
    for row in rows:
        if row["n_sites"]:
            assert row["r2"] == pytest.approx(1.0) or np.isnan(row["r2"])  # NaN: monomorphic in the samples
    assert "MAF from store" in (tmp_path / "report" / "report.md").read_text()


def test_no_common_samples_is_a_clear_error(files, tmp_path):
    lines = ["chr22\t1000\t.\tA\tG\t.\tPASS\tIMP\tGT:DS\t0|0:0"]
    other = write_vcf(tmp_path / "other.vcf.gz", BEAGLE_HEADER, ["nobody"], lines)
    with pytest.raises(UserError, match="no sample id in common"):
        evaluate([other], files["truth"], str(tmp_path / "r"))


def test_cli_evaluate_prints_the_table(files):
    result = CliRunner().invoke(app, ["evaluate", files["beagle"], "--truth", files["truth"],
                                      "--out", str(files["tmp"] / "cli")])
    assert result.exit_code == 0, result.output
    assert "[0.05, 0.5]" in result.output and "beagle.vcf.gz" in result.output
    assert (files["tmp"] / "cli" / "report.md").exists()


def test_cli_missing_ds_is_one_line_error(files, tmp_path):
    header = BEAGLE_HEADER.replace('##FORMAT=<ID=DS,Number=A,Type=Float,Description="estimated ALT dose [P(RA) + 2*P(AA)]">\n', "")
    header = header.replace('##FORMAT=<ID=GP,Number=G,Type=Float,Description="Estimated Genotype Probability">\n', "")
    no_ds = write_vcf(tmp_path / "gt_only.vcf.gz", header, ["s0"], ["chr22\t1000\t.\tA\tG\t.\tPASS\tIMP\tGT\t0|1"])
    result = CliRunner().invoke(app, ["evaluate", no_ds, "--truth", files["truth"], "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "gt_only.vcf.gz" in errors[0] and "FORMAT/DS" in errors[0] and "fix:" in errors[0]


def test_help_has_an_example():
    result = CliRunner().invoke(app, ["evaluate", "--help"])
    assert result.exit_code == 0 and "Example: ragtrain evaluate" in result.output


def test_cli_bad_store_fails_before_reading(files, tmp_path):
    result = CliRunner().invoke(app, ["evaluate", files["beagle"], "--truth", files["truth"],
                                      "--store", str(tmp_path / "missing.zarr"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "error:" in result.stderr and "missing.zarr" in result.stderr


def test_a_multiallelic_record_is_scored_as_one_site_an_alt(tmp_path):
    """Beagle writes a multiallelic marker with DS and DR2 one value an ALT: each is scored against the truth's
    record split the same way (as ragsnv reads panels and writes its output)."""
    samples = ["a", "b", "c", "d"]
    truth = write_vcf(tmp_path / "truth.vcf.gz", TRUTH_HEADER, samples,
                      ["chr22\t100\t.\tA\tC,T\t.\t.\t.\tGT\t0|1\t2|2\t1|2\t0|0"])
    imputed = write_vcf(tmp_path / "beagle.vcf.gz", BEAGLE_HEADER, samples,
                        [("chr22\t100\t.\tA\tC,T\t.\tPASS\tAF=0.2,0.4;DR2=0.9,0.8;IMP\tGT:DS:GP\t"
                         "0|1:1,0:0,1,0,0,0,0\t2|2:0,2:0,0,0,0,0,1\t1|2:1,1:0,0,0,0,1,0\t0|0:0,0:1,0,0,0,0,0")])
    found = read_imputed(imputed)
    assert found.keys == [("chr22", 100, "A", "C"), ("chr22", 100, "A", "T")]
    np.testing.assert_array_equal(found.dosage, [[1, 0, 1, 0], [0, 2, 1, 0]])
    np.testing.assert_allclose(found.dr2, [0.9, 0.8], rtol=1e-6)
    assert np.isnan(found.gp).all()  # genotype probabilities of a multiallelic record are not one site's
    split = read_truth(truth)
    assert split.counts[split.index["chr22", 100, "A", "C"]].tolist() == [1, 0, 1, 0]
    assert split.counts[split.index["chr22", 100, "A", "T"]].tolist() == [0, 2, 1, 0]
