"""The store API: neighbour reads equal window slices on every read path; bad stores are refused clearly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from conftest import stray_entries, tiny_options, torch_threads
from typer.testing import CliRunner
from zarr.codecs import ZstdCodec

from ragprep.cli import app
from ragprep.encode import encode
from stores import EmbeddingStore, StoreWriter, UserError, create_store, open_store, schema

# unsorted, repeated, first and last haplotype (120 haplotypes in blocks of 16: the last block is partial)
IDS = np.array([119, 3, 3, 64, 0, 17, 119, 15, 16, 101])

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread is fastest


@pytest.fixture(scope="module")
def stores(panel_vcf, store_path, int8_store_path, tmp_path_factory) -> dict[str, str]:
    """The session's zstd stores plus uncompressed (memory-mapped) and Zarr-sharded ones of the same panel."""
    root = tmp_path_factory.mktemp("stores")
    found = {"float16": store_path, "int8": int8_store_path}
    with torch_threads(1):
        for dtype in ("float16", "int8"):
            found[f"{dtype}-none"] = str(root / f"{dtype}-none.zarr")
            encode(str(panel_vcf), found[f"{dtype}-none"], tiny_options(memory_dtype=dtype, compressor="none"))
        found["float16-sharded"] = str(root / "sharded.zarr")
        encode(str(panel_vcf), found["float16-sharded"], tiny_options(sharded=True))
    return found


def assert_blocks_equal(a, b) -> None:
    np.testing.assert_array_equal(a.values, b.values)
    assert a.values.dtype == b.values.dtype
    if a.scales is None:
        assert b.scales is None
    else:
        np.testing.assert_array_equal(a.scales, b.scales)


@pytest.mark.parametrize("name", ["float16", "int8", "float16-none", "int8-none", "float16-sharded"])
def test_read_neighbours_equals_window_slices(stores, name):
    store = open_store(stores[name])
    assert store.mmap == name.endswith("-none")
    for window in (0, 5, store.n_windows - 1):
        whole = store.read_window(window)
        picked = store.read_neighbours(window, IDS)
        assert picked.values.shape == (IDS.size, store.plan.length, store.d_memory)
        expected = type(whole)(whole.values[IDS], None if whole.scales is None else whole.scales[IDS])
        assert_blocks_equal(picked, expected)
        np.testing.assert_array_equal(picked.dequantize(), whole.dequantize()[IDS])
        assert store.read_neighbours(window, np.array([], dtype=np.int64)).values.shape[0] == 0
    with pytest.raises(IndexError):
        store.read_neighbours(0, np.array([store.n_haplotypes]))


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_chunk_file_paths_equal_zarr_path(stores, dtype):
    """Chunk files read directly (memory-mapped raw, zstd-decoded) give what zarr gives, rows and scales too."""
    mapped = open_store(stores[f"{dtype}-none"])
    through_zarr = EmbeddingStore(stores[f"{dtype}-none"], use_mmap=False)
    compressed = open_store(stores[dtype])
    compressed_zarr = EmbeddingStore(stores[dtype], use_mmap=False)
    assert mapped.mmap and not through_zarr.mmap and not compressed.mmap
    assert compressed.local_chunks and not compressed_zarr.local_chunks
    for window in range(mapped.n_windows):
        block = mapped.read_neighbours(window, IDS)
        assert_blocks_equal(block, through_zarr.read_neighbours(window, IDS))
        assert_blocks_equal(block, compressed.read_neighbours(window, IDS))  # same encoder, same values
        assert_blocks_equal(compressed.read_window(window), compressed_zarr.read_window(window))
        np.testing.assert_array_equal(compressed.window_rows(window), compressed_zarr.window_rows(window))


def test_sharded_store_reads_like_unsharded(stores):
    sharded, plain = open_store(stores["float16-sharded"]), open_store(stores["float16"])
    assert sharded.meta.sharded and not sharded.mmap
    for window in range(plain.n_windows):
        assert_blocks_equal(sharded.read_window(window), plain.read_window(window))
        assert_blocks_equal(sharded.read_neighbours(window, IDS), plain.read_neighbours(window, IDS))


def test_bytes_on_disk_and_inspect_json(stores):
    for url in stores.values():
        assert open_store(url).bytes_on_disk() > 0
    result = CliRunner().invoke(app, ["inspect", stores["float16"], "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    store = open_store(stores["float16"])
    assert info["complete"] is True and info["windows_done"] == info["windows_total"] == store.n_windows
    assert info["embedding_bytes_on_disk"] == store.bytes_on_disk()
    assert 0 < info["bytes_per_haplotype_site"] < 2 * store.d_memory  # zstd on fp16: below 2 bytes a dim
    assert info["memory_dtype"] == "float16" and info["d_memory"] == 8
    assert info["sites"] == store.positions.size
    raw_store = open_store(stores["float16-none"])
    raw = json.loads(CliRunner().invoke(app, ["inspect", stores["float16-none"], "--json"]).stdout)
    assert 0 < raw["distinct_haplotypes"] < 1 and raw["distinct_haplotypes"] == info["distinct_haplotypes"]
    block = raw_store.meta.hap_block  # uncompressed: 2 bytes a dim, each window's distinct rows in whole chunks
    chunks = sum(-(-(int(raw_store.window_rows(w).max()) + 1) // block) for w in range(raw_store.n_windows))
    stored = chunks * block * raw_store.plan.length * 2 * raw_store.d_memory
    assert stored <= raw_store.bytes_on_disk() < stored + 4096  # and the arrays' metadata


@pytest.mark.parametrize("fixture", ["store_path", "int8_store_path"])
def test_format_1_store_one_row_a_haplotype_is_still_read(fixture, request, tmp_path):
    """A store written before haplotypes were deduplicated: every haplotype its own row (and int8 scale), no
    embedding_row."""
    store = open_store(request.getfixturevalue(fixture))
    windows = [store.read_window(w) for w in range(store.n_windows)]
    old = tmp_path / "v1.zarr"
    shutil.copytree(store.url, old)
    group = zarr.open_group(str(old), mode="r+")
    shape, block = (store.n_windows, store.n_haplotypes, store.plan.length), store.meta.hap_block
    del group[schema.EMBEDDINGS]  # format 1: a row a haplotype, no checksums
    group.create_array(schema.EMBEDDINGS, shape=(*shape, store.d_memory), chunks=(1, block, shape[2], store.d_memory),
                       dtype=store.embeddings.dtype, compressors=ZstdCodec())
    if store.scales is not None:  # and one scale a vector
        del group[schema.EMBEDDING_SCALE]
        group.create_array(schema.EMBEDDING_SCALE, shape=shape, chunks=(1, block, shape[2]), dtype="float16",
                           compressors=ZstdCodec())
    for w, block in enumerate(windows):
        group[schema.EMBEDDINGS][w] = block.values
        if block.scales is not None:
            group[schema.EMBEDDING_SCALE][w] = block.scales
    del group[schema.EMBEDDING_ROW]
    group.attrs[schema.ATTRS_KEY] = {**group.attrs[schema.ATTRS_KEY], "format_version": 1}
    v1 = open_store(str(old))
    assert v1.distinct_fraction() == 1.0 and store.distinct_fraction() < 1.0
    assert store.checksummed and not v1.checksummed and v1.summary()["checksums"] == "none (format 1): unchecked"
    for w in (0, store.n_windows - 1):
        assert_blocks_equal(v1.read_window(w), windows[w])
        assert_blocks_equal(v1.read_neighbours(w, IDS), store.read_neighbours(w, IDS))


def test_other_format_version_is_refused(store_path, tmp_path):
    copy = tmp_path / "old.zarr"
    shutil.copytree(store_path, copy)
    group = zarr.open_group(str(copy), mode="r+")
    group.attrs[schema.ATTRS_KEY] = {**group.attrs[schema.ATTRS_KEY], "format_version": 99}
    with pytest.raises(UserError, match=r"format version 99, this ragsnv reads versions 1, 2; fix: re-encode"):
        open_store(str(copy))
    result = CliRunner().invoke(app, ["inspect", str(copy)])
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {copy}: store format version 99")


def test_missing_or_foreign_store_is_refused(store_path, tmp_path):
    with pytest.raises(UserError, match="no ragsnv store there"):
        open_store(str(tmp_path / "nothing.zarr"))
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").attrs["something"] = 1
    with pytest.raises(UserError, match="a Zarr group but not a ragsnv store"):
        open_store(str(tmp_path / "other.zarr"))
    meta = open_store(store_path).meta
    (tmp_path / "a_file").write_text("")
    for target in (tmp_path / "other.zarr", tmp_path / "a_file"):  # what a resume would write into
        with pytest.raises(UserError, match="not a ragsnv store of format version 2; fix: pass --overwrite"):
            StoreWriter(str(target), meta)


def test_create_store_failing_midway_leaves_nothing(store_path, tmp_path):
    store = open_store(store_path)
    unwritable = np.array([object(), object()], dtype=object)  # zarr has no codec for it: fails after 2 arrays
    arrays = {schema.VARIANT_POSITION: store.positions, schema.SAMPLE_ID: store.sample_ids, "bad": unwritable}
    target = tmp_path / "half.zarr"
    with pytest.raises(Exception):  # noqa: B017 - whatever zarr raises, nothing may be left
        create_store(str(target), store.meta, arrays)
    assert not target.exists() and not stray_entries(tmp_path)


def test_create_store_guards_what_exists(store_path, tmp_path):
    meta, arrays = open_store(store_path).meta, store_arrays(store_path)
    target = tmp_path / "new.zarr"
    create_store(str(target), meta, arrays)
    assert open_store(str(target), require_complete=False).windows_done().sum() == 0
    with pytest.raises(UserError, match="already exists; fix: pass --overwrite"):
        create_store(str(target), meta, arrays)
    create_store(str(target), meta, arrays, overwrite=True)  # a store may be overwritten
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a Zarr store, so --overwrite leaves it"):
        create_store(str(keep), meta, arrays, overwrite=True)
    assert (keep / "notes.txt").read_text() == "mine" and not stray_entries(tmp_path)


def store_arrays(url: str) -> dict[str, np.ndarray]:
    """The panel and window arrays of a store, as create_store takes them."""
    group = zarr.open_group(url, mode="r")
    skip = {schema.WINDOW_DONE, schema.EMBEDDINGS, schema.EMBEDDING_SCALE, schema.EMBEDDING_ROW}
    return {name: np.asarray(array[...]) for name, array in group.arrays() if name not in skip}
