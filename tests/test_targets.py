"""load_targets on real target VCFs cut from the session panel: matching outcomes, allele coding, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pysam
import pytest

from ragprep.vcf import read_panel
from ragtrain.targets import load_targets
from stores import open_store
from stores.errors import UserError

COMPLEMENT = {"A": "T", "C": "G", "G": "C", "T": "A"}
N_SAMPLES = 4


def write_vcf(path: Path, records: list[tuple], contig: str = "chr22", samples: int = N_SAMPLES,
              header_contig: bool = True, index: bool = True) -> str:
    """records: (pos, ref, alt, [GT string per sample]); bgzipped and indexed unless index=False."""
    lines = ["##fileformat=VCFv4.2", '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">']
    if header_contig:
        lines.append(f"##contig=<ID={contig},length=100001>")
    lines.append("\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT",
                            *[f"T{i}" for i in range(samples)]]))
    for pos, ref, alt, gts in sorted(records):
        lines.append("\t".join([contig, str(pos), ".", ref, alt, ".", "PASS", ".", "GT", *gts]))
    plain = path.with_suffix("") if path.suffix == ".gz" else path
    plain.write_text("\n".join(lines) + "\n")
    if not index:
        return str(plain)
    pysam.tabix_compress(str(plain), str(path), force=True)
    pysam.tabix_index(str(path), preset="vcf", force=True)
    return str(path)


def phased(haps: np.ndarray) -> list[str]:
    """int [2N] haplotype alleles -> ['0|1', ...]."""
    return [f"{a}|{b}" for a, b in haps.reshape(-1, 2)]


@pytest.fixture(scope="module")
def panel(panel_vcf):
    return read_panel(str(panel_vcf))


@pytest.fixture(scope="module")
def store(store_path):
    return open_store(store_path)


def snp_sites(panel) -> tuple[list[int], list[int]]:
    """Indices of non-ambiguous and of strand-ambiguous (A/T, C/G) SNPs of the panel."""
    plain, ambiguous = [], []
    for i, (ref, alt) in enumerate(zip(panel.ref, panel.alt)):
        if ref in COMPLEMENT and alt in COMPLEMENT:
            (ambiguous if COMPLEMENT[ref] == alt else plain).append(i)
    return plain, ambiguous


def test_matching_outcomes_and_allele_matrix(panel, store, tmp_path):
    plain, ambiguous = snp_sites(panel)
    truth = panel.alleles[:, : 2 * N_SAMPLES]
    records, kept = [], []

    def add(i: int, ref: str, alt: str, haps: np.ndarray, keep: bool) -> None:
        records.append((int(panel.positions[i]), ref, alt, phased(haps)))
        if keep:
            kept.append(i)

    for i in plain[0:10:2] + ambiguous[0:2]:  # exact matches, A/T and C/G included
        add(i, panel.ref[i], panel.alt[i], truth[i], True)
    for i in plain[10:13]:  # REF/ALT swapped
        add(i, panel.alt[i], panel.ref[i], 1 - truth[i], True)
    for i in plain[13:15]:  # other strand
        add(i, COMPLEMENT[panel.ref[i]], COMPLEMENT[panel.alt[i]], truth[i], True)
    i = plain[15]  # other strand and swapped
    add(i, COMPLEMENT[panel.alt[i]], COMPLEMENT[panel.ref[i]], 1 - truth[i], True)
    for i in ambiguous[2:4]:  # A/T written T/A: swap or strand flip, cannot tell
        add(i, panel.alt[i], panel.ref[i], 1 - truth[i], False)
    i = plain[16]  # same position, other alleles
    other = next(b for b in "ACGT" if b not in (panel.ref[i], panel.alt[i]))
    add(i, panel.ref[i], other, truth[i], False)
    off_panel = next(p for p in range(int(panel.positions[0]) + 1, 10**6) if p not in set(panel.positions))
    records.append((off_panel, "A", "C", ["0|1"] * N_SAMPLES))
    missing_site = plain[0]
    records = [(p, r, a, ["./." if (p == panel.positions[missing_site] and s == 1) else g
                          for s, g in enumerate(gts)]) for p, r, a, gts in records]

    targets = load_targets(write_vcf(tmp_path / "t.vcf.gz", records), store)

    assert (targets.matched, targets.swapped, targets.flipped) == (7, 3, 3)
    assert (targets.ambiguous_dropped, targets.not_in_panel, targets.missing_calls) == (2, 2, 1)
    assert list(targets.sample_ids) == [f"T{i}" for i in range(N_SAMPLES)]
    assert targets.contig == "chr22" and targets.contig_length == 100001
    expected = np.full((panel.n_variants, 2 * N_SAMPLES), -1, dtype=np.int8)
    expected[kept] = truth[kept]
    expected[missing_site, 2:4] = -1
    assert targets.alleles.dtype == np.int8
    np.testing.assert_array_equal(targets.alleles, expected)
    np.testing.assert_array_equal(np.nonzero(targets.typed)[0], sorted(kept))
    text = targets.summary()
    assert "\n" not in text and "13 target sites on the panel" in text and "2 strand-ambiguous" in text


def test_region_limits_the_sites(panel, store, tmp_path):
    sites = range(0, 40, 4)
    records = [(int(panel.positions[i]), panel.ref[i], panel.alt[i], phased(panel.alleles[i, :8])) for i in sites]
    path = write_vcf(tmp_path / "t.vcf.gz", records)
    end = int(panel.positions[20])
    targets = load_targets(path, store, region=f"chr22:1-{end}")
    assert np.nonzero(targets.typed)[0].tolist() == [i for i in sites if i <= 20]


def test_plain_vcf_without_index_or_contig_lines(panel, store, tmp_path):
    records = [(int(panel.positions[i]), panel.ref[i], panel.alt[i], phased(panel.alleles[i, :8])) for i in (3, 9)]
    path = write_vcf(tmp_path / "t.vcf", records, header_contig=False, index=False)
    targets = load_targets(path, store)
    assert targets.matched == 2 and targets.contig_length is None


@pytest.mark.parametrize("header_contig", [True, False])
def test_contig_mismatch_names_both_contigs(panel, store, tmp_path, header_contig):
    records = [(int(panel.positions[i]), panel.ref[i], panel.alt[i], phased(panel.alleles[i, :8])) for i in (3, 9)]
    path = write_vcf(tmp_path / "t.vcf.gz", records, contig="22", header_contig=header_contig)
    with pytest.raises(UserError) as err:
        load_targets(path, store)
    message = str(err.value)
    assert "\n" not in message and path in message and "22" in message and "chr22" in message
    assert "rename" in message


def test_region_on_another_contig(store, tmp_path, panel):
    records = [(int(panel.positions[3]), panel.ref[3], panel.alt[3], phased(panel.alleles[3, :8]))]
    with pytest.raises(UserError, match="chr21.*chr22"):
        load_targets(write_vcf(tmp_path / "t.vcf.gz", records), store, region="chr21")


def test_unphased_calls_are_read_and_marked(panel, store, tmp_path):
    """Unphased heterozygous calls are kept (impute phases them) and marked; an unphased homozygote is as good as
    phased."""
    records = [(int(panel.positions[i]), panel.ref[i], panel.alt[i], ["0/1", "0|0", "1/1", "1|0"]) for i in (3, 9)]
    targets = load_targets(write_vcf(tmp_path / "t.vcf.gz", records), store)
    assert targets.unphased.shape == (2, 4) and targets.unphased[:, 0].all() and not targets.unphased[:, 1:].any()
    assert targets.unphased_samples == 1 and "1 samples with unphased heterozygous calls" in targets.summary()


def test_no_site_in_common(panel, store, tmp_path):
    taken = set(panel.positions.tolist())
    free = [p for p in range(1, 10**5) if p not in taken][:3]
    records = [(p, "A", "C", ["0|1"] * N_SAMPLES) for p in free]
    with pytest.raises(UserError, match="none of the target's 3 sites") as err:
        load_targets(write_vcf(tmp_path / "t.vcf.gz", records), store)
    assert "genome build" in str(err.value) and "\n" not in str(err.value)


def test_sites_of_a_split_multiallelic_record_are_told_apart_by_their_alleles(panel, store, tmp_path):
    """Where the panel holds several sites at one position (a split multiallelic record), a target record types
    the one with its alleles, and a multiallelic target record is split onto each."""
    positions = np.asarray(store.positions)
    at = int(np.flatnonzero(np.diff(positions) == 0)[0])  # sites at and at + 1 share a position
    ref, first_alt = store.alleles_ref_alt[at]
    second_alt = store.alleles_ref_alt[at + 1][1]
    records = [(int(positions[at]), ref, second_alt, ["0|1", "1|1", "0|0", "1|0"])]
    targets = load_targets(write_vcf(tmp_path / "second.vcf.gz", records), store)
    assert np.flatnonzero(targets.typed).tolist() == [at + 1] and targets.matched == 1
    assert targets.alleles[at + 1].tolist() == [0, 1, 1, 1, 0, 0, 1, 0]
    records = [(int(positions[at]), ref, f"{first_alt},{second_alt}", ["0|2", "1|1", "2|0", "0|0"])]
    targets = load_targets(write_vcf(tmp_path / "both.vcf.gz", records), store)
    assert np.flatnonzero(targets.typed).tolist() == [at, at + 1] and targets.split_multiallelic == 1
    assert targets.alleles[at].tolist() == [0, 0, 1, 1, 0, 0, 0, 0]
    assert targets.alleles[at + 1].tolist() == [0, 1, 0, 0, 1, 0, 0, 0]
