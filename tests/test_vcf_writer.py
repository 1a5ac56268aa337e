"""write_imputed_vcf round trip through cyvcf2, pysam and bcftools; field consistency; Beagle's DR2."""

from __future__ import annotations

import numpy as np
import pysam
import pytest
from cyvcf2 import VCF
from pysam import bcftools
from pysam.libcbgzf import BGZFile

from ragprep.vcf import read_panel
from ragtrain.metrics import dr2_from_haplotypes as dr2_from_haplotype_probs
from ragtrain.targets import load_targets
from ragtrain.vcf_writer import BGZF_BLOCK, SCALE, BgzfWriter, Sites, _genotype_fields, write_imputed_vcf
from stores import open_store
from stores.errors import UserError

N_SAMPLES = 4


@pytest.fixture(scope="module")
def store(store_path):
    return open_store(store_path)


@pytest.fixture(scope="module")
def targets(panel_vcf, store, tmp_path_factory):
    """Every 5th panel site of the first 4 panel samples, one missing call, as a target VCF."""
    panel = read_panel(str(panel_vcf))
    folder = tmp_path_factory.mktemp("target")
    lines = ["##fileformat=VCFv4.2", '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
             f"##contig=<ID=chr22,length={panel.contig_length}>",
             "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT",
                        *[f"T{i}" for i in range(N_SAMPLES)]])]
    for i in range(0, panel.n_variants, 5):
        gts = [f"{a}|{b}" for a, b in panel.alleles[i, : 2 * N_SAMPLES].reshape(-1, 2)]
        if i == 10:
            gts[2] = ".|."
        lines.append("\t".join(["chr22", str(panel.positions[i]), ".", panel.ref[i], panel.alt[i], ".", ".", ".",
                                "GT", *gts]))
    (folder / "t.vcf").write_text("\n".join(lines) + "\n")
    pysam.tabix_compress(str(folder / "t.vcf"), str(folder / "t.vcf.gz"))
    pysam.tabix_index(str(folder / "t.vcf.gz"), preset="vcf")
    return load_targets(str(folder / "t.vcf.gz"), store)


@pytest.fixture(scope="module")
def written(store, targets, tmp_path_factory):
    rng = np.random.default_rng(5)
    probs = rng.random((store.positions.size, 2 * N_SAMPLES)).astype(np.float32)
    probs[::7] = np.round(probs[::7])  # some confident sites
    probs[3, :2] = [0.5, 0.5004]  # ties round to REF
    probs[4, :2] = [0.5006, 1.0]
    out = tmp_path_factory.mktemp("out") / "imputed.vcf.gz"
    path = write_imputed_vcf(out, Sites.from_store(store, targets.contig_length), targets.sample_ids, probs,
                             targets.typed, targets.alleles, source="ragsnv test")
    return path, probs


def read_records(path) -> list:
    return list(VCF(str(path)))


def test_round_trip_reads_cleanly_and_covers_every_site(written, store, capfd):
    path, _ = written
    capfd.readouterr()
    records = read_records(path)
    list(pysam.VariantFile(str(path)))
    view = bcftools.view("-H", str(path))
    assert capfd.readouterr().err == "" and not bcftools.view.get_messages()
    assert len(view.splitlines()) == store.positions.size
    positions = np.array([r.POS for r in records])
    np.testing.assert_array_equal(positions, store.positions)  # sorted, every panel site exactly once
    ref_alt = np.asarray(store.alleles_ref_alt)
    assert [r.REF for r in records] == list(ref_alt[:, 0])
    assert [r.ALT[0] for r in records] == list(ref_alt[:, 1])
    assert all(r.CHROM == "chr22" for r in records)


def test_header(written, targets):
    path, _ = written
    header = VCF(str(path)).raw_header
    for line in ("##fileformat=VCFv4.2", "##source=ragsnv test", "##contig=<ID=chr22,length=100001>",
                 "##INFO=<ID=AF,", "##INFO=<ID=DR2,", "##INFO=<ID=IMP,Number=0,Type=Flag",
                 "##FORMAT=<ID=GT,", "##FORMAT=<ID=DS,", "##FORMAT=<ID=GP,Number=G", "##FORMAT=<ID=HDS,Number=."):
        assert line in header
    assert VCF(str(path)).samples == list(targets.sample_ids)


def test_typed_sites_keep_the_targets_calls(written, targets):
    path, probs = written
    for i, record in enumerate(read_records(path)):
        hds = record.format("HDS").reshape(-1)
        assert record.INFO.get("IMP") is None if targets.typed[i] else record.INFO.get("IMP") is True
        observed = targets.alleles[i]
        expected = np.where(targets.typed[i] & (observed >= 0), observed, np.round(probs[i], 3))
        np.testing.assert_allclose(hds, expected, atol=1e-6)
        if targets.typed[i]:
            gt = np.array([g[:2] for g in record.genotypes]).reshape(-1)
            known = observed >= 0
            np.testing.assert_array_equal(gt[known], observed[known])
    assert targets.missing_calls == 1 and (targets.alleles[10] == -1).sum() == 2  # imputed from probs above


def test_gt_ds_gp_hds_agree(written):
    path, _ = written
    for record in read_records(path):
        ds = record.format("DS")[:, 0].astype(np.float64)
        gp = record.format("GP").astype(np.float64)
        hds = record.format("HDS").astype(np.float64)
        gt = np.array([g[:2] for g in record.genotypes])
        assert all(g[2] for g in record.genotypes)  # phased
        np.testing.assert_allclose(ds, hds.sum(axis=1), atol=1e-6)
        np.testing.assert_allclose(ds, gp[:, 1] + 2 * gp[:, 2], atol=1e-6)
        np.testing.assert_allclose(gp.sum(axis=1), 1, atol=1e-6)
        assert (gp >= 0).all()
        np.testing.assert_array_equal(gt, (hds > 0.5).astype(int))
    tie, above = read_records(path)[3:5]
    assert tie.genotypes[0][:2] == [0, 0] and above.genotypes[0][:2] == [1, 1]


def test_fields_exact_in_thousandths_over_a_grid():
    grid = np.arange(0, SCALE + 1, 7)
    h1, h2 = (a.reshape(-1) for a in np.meshgrid(grid, grid))
    for field, a, b in zip(_genotype_fields(h1, h2), h1, h2):
        gt, ds, gp, hds = field.split(":")
        gp_m = [round(float(x) * SCALE) for x in gp.split(",")]
        hds_m = [round(float(x) * SCALE) for x in hds.split(",")]
        assert hds_m == [a, b] and round(float(ds) * SCALE) == a + b == gp_m[1] + 2 * gp_m[2]
        assert sum(gp_m) == SCALE and min(gp_m) >= 0 and abs(gp_m[2] - a * b / SCALE) <= 0.5
        assert gt == f"{int(a > 500)}|{int(b > 500)}"


def test_info_af_and_dr2(written, store, targets):
    path, probs = written
    final = np.where(targets.typed[:, None] & (targets.alleles >= 0), targets.alleles, probs)
    dr2 = dr2_from_haplotype_probs(final)
    records = read_records(path)
    np.testing.assert_allclose([r.INFO["DR2"] for r in records], np.round(dr2, 3), atol=1e-6)
    np.testing.assert_allclose([r.INFO["AF"] for r in records], np.round(store.af, 4), atol=1e-6)


def test_tabix_region_query(written, store):
    path, _ = written
    assert path.with_name(path.name + ".tbi").exists()
    lo, hi = int(store.positions[20]), int(store.positions[40])
    found = [r.POS for r in VCF(str(path))(f"chr22:{lo}-{hi}")]
    assert found == store.positions[20:41].tolist()


def test_plain_arrays_unsorted_sites_are_written_sorted(tmp_path):
    positions = np.array([300, 100, 200])
    sites = Sites("chr1", positions, np.array(["A", "C", "G"]), np.array(["G", "T", "A"]), np.array([0.1, 0.2, 0.3]))
    probs = np.array([[0.9, 0.1], [0.0, 1.0], [0.5, 0.25]], dtype=np.float32)
    out = write_imputed_vcf(tmp_path / "x.vcf.gz", sites, ["S1"], probs)
    records = read_records(out)
    assert [r.POS for r in records] == [100, 200, 300]
    assert [r.REF for r in records] == ["C", "G", "A"]
    np.testing.assert_allclose(records[0].format("HDS")[0], [0.0, 1.0])
    assert all(r.INFO.get("IMP") for r in records)
    assert "##contig=<ID=chr1>" in VCF(str(out)).raw_header


def test_bgzf_writer_writes_the_blocks_htslib_writes(tmp_path):
    """Deflated in threads, the blocks come out in order and byte for byte as pysam's (htslib's) BGZFile writes
    them, across block boundaries and writes of any size."""
    rng = np.random.default_rng(3)
    text = "".join(f"chr22\t{i}\t{rng.integers(0, 1000)}\n" for i in range(40_000)).encode()
    assert len(text) > 5 * BGZF_BLOCK
    with BGZFile(str(tmp_path / "htslib.gz"), "wb") as handle:
        handle.write(text)
    with BgzfWriter(tmp_path / "ours.gz", ahead=2) as handle:
        for start, stop in [(0, 10), (10, 70_000), (70_000, 200_001), (200_001, len(text))]:
            handle.write(text[start:stop])
    assert (tmp_path / "ours.gz").read_bytes() == (tmp_path / "htslib.gz").read_bytes()
    with BGZFile(str(tmp_path / "ours.gz"), "rb") as handle:
        assert handle.read() == text


def test_bad_arguments(tmp_path):
    sites = Sites("chr1", np.array([1, 2]), np.array(["A", "C"]), np.array(["G", "T"]), np.array([0.1, 0.2]))
    with pytest.raises(UserError, match="vcf.gz"):
        write_imputed_vcf(tmp_path / "x.vcf", sites, ["S1"], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="shape"):
        write_imputed_vcf(tmp_path / "x.vcf.gz", sites, ["S1", "S2"], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="probabilities"):
        write_imputed_vcf(tmp_path / "x.vcf.gz", sites, ["S1"], np.full((2, 2), np.nan))
    dotted = Sites("chr1", np.array([1, 2]), np.array(["A", "C"]), np.array([".", "T"]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="REF/ALT"):
        write_imputed_vcf(tmp_path / "x.vcf.gz", dotted, ["S1"], np.zeros((2, 2)))


def test_dr2():
    confident = np.array([[0, 1, 1, 0, 1, 0, 0, 0]], dtype=np.float32)
    assert dr2_from_haplotype_probs(confident)[0] == pytest.approx(1.0)
    constant = np.full((3, 8), 0.3, dtype=np.float32)
    constant[1], constant[2] = 0.0, 1.0
    np.testing.assert_array_equal(dr2_from_haplotype_probs(constant), 0.0)
    # mean 0.5: sum of squared deviations 0.5 over n * mean * (1 - mean) = 1
    assert dr2_from_haplotype_probs(np.array([[0.9, 0.1, 0.8, 0.2]]))[0] == pytest.approx(0.5)
    values = dr2_from_haplotype_probs(np.random.default_rng(0).random((50, 40)))
    assert ((values >= 0) & (values <= 1)).all()
