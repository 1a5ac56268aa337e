"""Shared fixtures: small real panels simulated with msprime, and real stores encoded from them."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pysam
import pytest
import torch
import zarr

from ragprep.encode import EncodeOptions, encode
from ragprep.model import BertConfig
from ragprep.simulate import simulate_panel

TINY = BertConfig(d_model=16, n_layers=1, n_heads=2, window=32, d_memory=8)

# `ragprep encode` options that give the same encoder and store as tiny_options()
TINY_CLI = ["--window", "32", "--stride", "24", "--d-model", "16", "--layers", "1", "--heads", "2",
            "--d-memory", "8", "--seed", "3", "--device", "cpu", "--batch-size", "32", "--hap-block", "16",
            "--dtype", "float16"]


def tiny_options(**overrides) -> EncodeOptions:
    """Encode options small enough for a test: 16 dims, 1 layer, windows of 32 sites with stride 24."""
    base = {"config": TINY, "stride": 24, "seed": 3, "device": "cpu", "batch_size": 32, "hap_block": 16,
            "memory_dtype": "float16"}
    return EncodeOptions(**{**base, **overrides})


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run torch on `n` threads for a while: tiny test models are fastest on one (two crawl on busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def panel_vcf(tmp_path_factory) -> Path:
    """60 diploid samples, ~490 biallelic sites, one multiallelic (OutOfAfrica_3G09); bgzipped, indexed."""
    path, _ = simulate_panel(tmp_path_factory.mktemp("panel") / "panel.vcf.gz", samples=60, length=1e5, seed=7)
    return path


@pytest.fixture(scope="session")
def store_path(panel_vcf, tmp_path_factory) -> str:
    """A complete fp16 store of `panel_vcf` at the tiny config."""
    out = str(tmp_path_factory.mktemp("store") / "store.zarr")
    with torch_threads(1):
        encode(str(panel_vcf), out, tiny_options())
    return out


@pytest.fixture(scope="session")
def int8_store_path(panel_vcf, tmp_path_factory) -> str:
    """`store_path` again, stored as int8 with per-vector scales."""
    out = str(tmp_path_factory.mktemp("store_int8") / "store.zarr")
    with torch_threads(1):
        encode(str(panel_vcf), out, tiny_options(memory_dtype="int8"))
    return out


# --- small hand-written VCFs ----------------------------------------------------------------------------

VCF_HEADER = (
    "##fileformat=VCFv4.2\n"
    "##contig=<ID=chr1,length=100000>\n"
    "##contig=<ID=chr2,length=100000>\n"
    '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
    "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT"
)


def vcf_record(pos: int, *genotypes: str, chrom: str = "chr1", ref: str = "A", alt: str = "G") -> str:
    return "\t".join([chrom, str(pos), ".", ref, alt, ".", ".", ".", "GT", *genotypes])


def write_vcf_text(path: Path, records: list[str], samples: tuple[str, ...] = ("S1", "S2", "S3"),
              index: bool = False) -> Path:
    """Write VCF text (header + records), bgzip it with pysam, optionally tabix-index it; returns the .vcf.gz.
    Without samples the header has no FORMAT column either (give records of 8 columns)."""
    header = VCF_HEADER + "".join(f"\t{s}" for s in samples)
    if not samples:
        header = VCF_HEADER.removesuffix("\tFORMAT")
    plain = Path(path).with_suffix("")  # x.vcf.gz -> x.vcf
    plain.write_text("\n".join([header, *records]) + "\n")
    pysam.tabix_compress(str(plain), str(path), force=True)
    plain.unlink()
    if index:
        pysam.tabix_index(str(path), preset="vcf", force=True)
    return Path(path)


def good_records(positions=range(100, 1000, 100), chrom: str = "chr1") -> list[str]:
    """Phased diploid biallelic records for samples S1, S2, S3."""
    calls = [("0|1", "1|0", "0|0"), ("1|1", "0|1", "1|0"), ("0|0", "1|1", "0|1")]
    return [vcf_record(p, *calls[i % 3], chrom=chrom) for i, p in enumerate(positions)]


# --- comparing stores -----------------------------------------------------------------------------------

def store_contents(url: str) -> tuple[dict, dict[str, tuple[dict, np.ndarray]]]:
    """(group attrs, {array name: (array metadata, values)}) of every array in a store."""
    group = zarr.open_group(url, mode="r")
    arrays = {name: (array.metadata.to_dict(), np.asarray(array[...])) for name, array in group.arrays()}
    return group.attrs.asdict(), arrays


def assert_stores_equal(a: str, b: str) -> None:
    """Same attrs, same array names, and every array equal in metadata and values, element for element."""
    attrs_a, arrays_a = store_contents(a)
    attrs_b, arrays_b = store_contents(b)
    assert attrs_a == attrs_b
    assert sorted(arrays_a) == sorted(arrays_b)
    for name, (meta, values) in arrays_a.items():
        meta_b, values_b = arrays_b[name]
        assert meta == meta_b, name
        assert values.dtype == values_b.dtype and values.shape == values_b.shape, name
        assert np.array_equal(values, values_b), name


def stray_entries(directory: Path) -> list[str]:
    """Hidden staging directories that a failed create_store could leave (`.NAME.creating-PID`)."""
    return [p.name for p in Path(directory).iterdir() if ".creating-" in p.name]


def subset(src: Path, out: Path, every: int = 1, samples: int = 4,
           edit: Callable[[list[str]], list[str]] | None = None, index: bool = True) -> Path:
    """A bgzipped copy of `src` with every `every`-th record and its first `samples` samples; `edit` may change
    the lines (header included) first."""
    with gzip.open(src, "rt") as handle:
        lines = handle.read().splitlines()
    header = [line for line in lines if line.startswith("##")]
    columns = next(line for line in lines if line.startswith("#CHROM")).split("\t")[:9 + samples]
    records = [line.split("\t")[:9 + samples] for line in lines if not line.startswith("#")][::every]
    text = header + ["\t".join(columns)] + ["\t".join(r) for r in records]
    plain = out.with_suffix("")
    plain.write_text("\n".join(edit(text) if edit else text) + "\n")
    pysam.tabix_compress(str(plain), str(out), force=True)
    plain.unlink()
    if index:
        pysam.tabix_index(str(out), preset="vcf", force=True)
    return out
