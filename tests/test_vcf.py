"""VCF -> panel -> store keeps every allele, position, REF/ALT and sample id; bad records fail on one line."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import good_records, vcf_record, write_vcf_text
from cyvcf2 import VCF

from ragprep.vcf import parse_region, read_panel
from stores import open_store
from stores.errors import UserError


def read_with_cyvcf2(path) -> dict:
    """The panel read directly with cyvcf2, independently of ragprep.vcf: a multiallelic record split into one
    site an ALT allele (that ALT 1, any other allele 0)."""
    vcf = VCF(str(path))
    positions, ref, alt, rows, multiallelic = [], [], [], [], []
    for rec in vcf:
        if len(rec.ALT) != 1:
            multiallelic.append(f"{rec.CHROM}:{rec.POS}")
        for number, allele in enumerate(rec.ALT, start=1):
            positions.append(rec.POS)
            ref.append(rec.REF)
            alt.append(allele)
            calls = np.array(rec.genotypes)[:, :2]
            rows.append((calls == number).astype(np.int8).reshape(-1))  # [S1a, S1b, S2a, ...]
    return {"samples": list(vcf.samples), "positions": np.array(positions), "ref": ref, "alt": alt,
            "haplotypes": np.array(rows).T, "multiallelic": multiallelic}  # haplotypes [2N, V]


def test_store_round_trip_equals_cyvcf2(panel_vcf, store_path):
    truth = read_with_cyvcf2(panel_vcf)
    store = open_store(store_path)
    assert store.is_complete
    assert store.contig == "chr22"
    assert store.sample_ids.tolist() == truth["samples"]
    np.testing.assert_array_equal(store.positions, truth["positions"])
    np.testing.assert_array_equal(store.alleles_ref_alt[:, 0], truth["ref"])
    np.testing.assert_array_equal(store.alleles_ref_alt[:, 1], truth["alt"])
    np.testing.assert_array_equal(store.alleles(), truth["haplotypes"])
    np.testing.assert_array_equal(store.alleles(slice(17, 90)), truth["haplotypes"][:, 17:90])
    assert store.n_haplotypes == 2 * len(truth["samples"])
    # the session panel does hold a multiallelic record: it was split (sites at one position), counted and named
    panel = read_panel(str(panel_vcf))
    assert truth["multiallelic"] and panel.split_multiallelic == len(truth["multiallelic"])
    assert panel.split_examples == truth["multiallelic"][:3] and (np.diff(store.positions) == 0).any()
    skipped = read_panel(str(panel_vcf), multiallelic="skip")
    assert skipped.skipped_multiallelic == len(truth["multiallelic"])
    multi = [int(where.split(":")[1]) for where in truth["multiallelic"]]
    assert not np.isin(skipped.positions, multi).any() and np.isin(panel.positions, multi).sum() > len(multi)


def test_af_is_alt_frequency_of_the_panel(panel_vcf, store_path):
    truth = read_with_cyvcf2(panel_vcf)
    expected = (truth["haplotypes"] == 1).sum(axis=0) / truth["haplotypes"].shape[0]
    store = open_store(store_path)
    assert store.af.dtype == np.float32
    np.testing.assert_allclose(store.af, expected, rtol=0, atol=1e-7)
    assert 0 < store.af.min() and store.af.max() < 1  # simulated sites are segregating


def test_region_picks_one_contig_with_and_without_index(tmp_path):
    records = good_records(range(100, 1000, 100)) + good_records(range(50, 550, 100), chrom="chr2")
    for index in (False, True):
        path = write_vcf_text(tmp_path / f"two_{index}.vcf.gz", records, index=index)
        panel = read_panel(str(path), region="chr2")
        assert panel.contig == "chr2" and panel.positions.tolist() == [50, 150, 250, 350, 450]
        panel = read_panel(str(path), region="chr1:200-500")
        assert panel.contig == "chr1" and panel.positions.tolist() == [200, 300, 400, 500]
        with pytest.raises(UserError, match="no biallelic records in region chr3"):
            read_panel(str(path), region="chr3")
        with pytest.raises(UserError, match=r"chr2:50: records of a second contig .*--region chr1"):
            read_panel(str(path))


def test_parse_region():
    assert parse_region("chr22") == ("chr22", 1, 2**62)
    assert parse_region("chr22:1,000-2,000") == ("chr22", 1000, 2000)
    with pytest.raises(UserError, match="--region"):
        parse_region("chr22:abc")


def test_targets_keep_missing_calls(tmp_path):
    """allow_missing (targets): './.', '.|.', '.' and half-missing calls become -1; phased calls stay."""
    records = [vcf_record(100, "0|1", "./.", "1|1"), vcf_record(200, ".|.", "1|0", "."),
               vcf_record(300, "0|.", "1|1", "0|0")]
    panel = read_panel(str(write_vcf_text(tmp_path / "t.vcf.gz", records)), allow_missing=True)
    np.testing.assert_array_equal(panel.alleles, [[0, 1, -1, -1, 1, 1], [-1, -1, 1, 0, -1, -1],
                                                  [0, -1, 1, 1, 0, 0]])
    np.testing.assert_allclose(panel.af, [3 / 4, 1 / 2, 2 / 5])  # over observed haplotypes only


def test_haploid_calls_are_read_as_a_homozygous_pair_and_marked(tmp_path):
    """chrX males outside the PARs: a haploid call is both haplotypes' allele, and keep_ploidy marks it."""
    records = good_records(range(100, 400, 100)) + [vcf_record(400, "0|1", "1", "0")]
    panel = read_panel(str(write_vcf_text(tmp_path / "x.vcf.gz", records)), keep_ploidy=True)
    assert panel.alleles[-1].tolist() == [0, 1, 1, 1, 0, 0]
    assert panel.haploid[-1].tolist() == [False, True, True] and not panel.haploid[:-1].any()


@pytest.mark.parametrize(("call", "problem"), [
    ("0/1", "sample S2 is unphased"),
    ("./.", "sample S2 has a missing allele"),  # cyvcf2 flags it unphased: missing must win
    (".|.", "sample S2 has a missing allele"),
    (".", "sample S2 has a missing allele"),
    ("0|1|1", "sample S2 has ploidy 3"),
])
def test_bad_call_names_file_site_and_sample(tmp_path, call, problem):
    records = good_records(range(100, 400, 100)) + [vcf_record(400, "0|1", call, "1|1")]
    path = write_vcf_text(tmp_path / "bad.vcf.gz", records)
    with pytest.raises(UserError) as err:
        read_panel(str(path))
    text = str(err.value)
    assert text.startswith(f"{path}: chr1:400: {problem}") and "; fix: " in text and "\n" not in text


def test_every_reader_takes_the_same_sites(tmp_path):
    """One rule for which records are sites: the panel reader (encode, impute's targets), split's reader and
    evaluate's truth reader keep '*' and symbolic ALTs as biallelic markers; the panel and truth readers split a
    multiallelic record into one site an ALT, which `split` (a biallelic panel maker) leaves out."""
    from ragprep.split import _read_calls
    from ragtrain.evaluate import read_truth

    calls = ("0|1", "1|0", "0|0")
    records = [vcf_record(100, *calls), vcf_record(200, *calls, alt="*"), vcf_record(300, *calls, alt="<DEL>"),
               vcf_record(400, *calls, alt="C,T"), vcf_record(500, *calls, ref="AT", alt="A")]
    path = write_vcf_text(tmp_path / "kinds.vcf.gz", records, index=True)
    panel = read_panel(str(path))
    sites = {(int(p), r, a) for p, r, a in zip(panel.positions, panel.ref, panel.alt)}
    biallelic = {(100, "A", "G"), (200, "A", "*"), (300, "A", "<DEL>"), (500, "AT", "A")}
    assert sites == biallelic | {(400, "A", "C"), (400, "A", "T")}
    assert panel.split_multiallelic == 1
    assert {(pos, ref, alt) for _, pos, ref, alt in _read_calls(str(path)).keys} == biallelic
    assert {(pos, ref, alt) for _, pos, ref, alt in read_truth(str(path)).index} == sites
