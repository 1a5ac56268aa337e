"""Create a store and write window embeddings into it, crash-safe and shard-safe.

A window counts as written only once `window_done[w]` is set, after its embeddings; every window has its own
chunks (and shard), so writers of disjoint windows never touch the same object.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from stores import schema
from stores.errors import UserError, environment_error, output_error
from stores.plan import WindowPlan


def is_local(url: str) -> bool:
    return "://" not in str(url) or str(url).startswith("file://")


def local_path(url: str) -> Path:
    return Path(str(url).removeprefix("file://"))


def create_store(
    url: str,
    meta: schema.StoreMeta,
    arrays: dict[str, np.ndarray],
    overwrite: bool = False,
    storage_options: dict | None = None,
    exist_ok: bool = False,
) -> None:
    """Write a new store: metadata, panel and window arrays, and empty embedding arrays.

    `arrays` maps schema names to the panel's numpy arrays; the window arrays are written from `meta.window`.
    `exist_ok`: a store that appeared meanwhile (another shard made it first) is left for `StoreWriter` to check. On a local disk the store is built
    beside its target and renamed into place, so a store either exists whole or not at all.
    """
    if not is_local(url):
        _populate(zarr.open_group(url, mode="w", storage_options=storage_options), meta, arrays)
        return
    target = local_path(url)
    if target.exists():
        if not overwrite and exist_ok and (target / "zarr.json").is_file():
            return
        if not overwrite:
            raise UserError(url, "already exists", "pass --overwrite to start over, or another --out")
        if not (target / "zarr.json").is_file() and not (target.is_dir() and not any(target.iterdir())):
            raise UserError(url, "exists and is not a Zarr store, so --overwrite leaves it", "pass another --out")
        shutil.rmtree(target)
    staging = target.with_name(f".{target.name}.creating-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _populate(zarr.open_group(str(staging), mode="w"), meta, arrays)
    except BaseException as err:  # leave nothing behind: no store, no staging directory
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(err, OSError) and (user_error := output_error(err, url)):
            raise user_error from None
        raise
    try:
        staging.rename(target)
    except OSError:  # another shard created it first: use theirs if it matches
        shutil.rmtree(staging, ignore_errors=True)


ZSTD_LEVEL = 9
"""4 % smaller than level 3 on a store's embeddings, for 0.3 s more a 20 MB of them; decoding is as fast."""


def stored_codecs(compressor: str) -> tuple:
    """The bytes codecs of a store's arrays: zstd (or none), then a crc32c checksum of every stored chunk, which
    every read verifies."""
    return ((ZstdCodec(level=ZSTD_LEVEL),) if compressor == "zstd" else ()) + (Crc32cCodec(),)


def _populate(group: zarr.Group, meta: schema.StoreMeta, arrays: dict[str, np.ndarray]) -> None:
    plan = WindowPlan.from_dict(meta.window)
    arrays = {**arrays, schema.WINDOW_START: plan.starts, schema.WINDOW_LENGTH: plan.lengths,
              schema.WINDOW_CORE_START: plan.core_starts, schema.WINDOW_CORE_END: plan.core_ends}
    panel_codecs = stored_codecs("zstd")
    for name, values in arrays.items():
        if values.dtype.kind == "U":  # variable-length UTF-8: the string type other Zarr readers share
            group.create_array(name, shape=values.shape, dtype=str, chunks=_panel_chunks(values),
                               compressors=panel_codecs)[...] = values
        else:
            group.create_array(name, data=values, chunks=_panel_chunks(values), compressors=panel_codecs)
    n_windows = plan.n_windows
    group.create_array(schema.WINDOW_DONE, shape=(n_windows,), chunks=(1,), dtype=bool, fill_value=False,
                       compressors=panel_codecs)
    length, d, h, block = plan.length, meta.d_memory, meta.n_haplotypes, meta.hap_block
    compressors = stored_codecs(meta.compressor)
    group.create_array(schema.EMBEDDING_ROW, shape=(n_windows, h), chunks=(1, h), dtype="int32", fill_value=-1,
                       compressors=compressors)
    block_shards = -(-h // block) * block
    common = {"compressors": compressors, "fill_value": 0, "config": {"write_empty_chunks": True}}
    group.create_array(
        schema.EMBEDDINGS, shape=(n_windows, h, length, d), dtype=meta.memory_dtype,
        chunks=(1, block, length, d), shards=(1, block_shards, length, d) if meta.sharded else None, **common,
    )
    if meta.memory_dtype == "int8":
        group.create_array(
            schema.EMBEDDING_SCALE, shape=(n_windows, length), dtype="float16", chunks=(1, length), **common,
        )
    group.attrs[schema.ATTRS_KEY] = meta.to_dict()


def _panel_chunks(values: np.ndarray) -> tuple[int, ...]:
    """Chunk panel arrays along variants in blocks of about 16 MiB, whole along the other axes."""
    if values.ndim == 0 or values.size == 0:
        return values.shape or (1,)
    row_bytes = max(1, values[0].nbytes if values.ndim > 1 else values.itemsize)
    rows = int(max(1, min(values.shape[0], (16 << 20) // row_bytes)))
    return (rows, *values.shape[1:])


class StoreWriter:
    """Writes whole windows into an existing store whose metadata matches `meta`."""

    def __init__(self, url: str, meta: schema.StoreMeta, storage_options: dict | None = None) -> None:
        self.url = url
        try:
            self.group = zarr.open_group(url, mode="r+", storage_options=storage_options)
        except (OSError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
            self.group = None
        attrs = None if self.group is None else self.group.attrs.get(schema.ATTRS_KEY)
        if not isinstance(attrs, dict) or attrs.get("format_version") != meta.format_version:
            raise UserError(url, f"exists but is not a ragsnv store of format version {meta.format_version}",
                            "pass --overwrite to start over, or another --out")
        found = schema.StoreMeta.from_dict(attrs).content_key()
        wanted = meta.content_key()
        diff = [k for k in wanted if found.get(k) != wanted[k]]
        if diff:
            k = diff[0]
            raise UserError(url, f"exists with other settings ({k}: {found.get(k)!r} there, {wanted[k]!r} now)",
                            "pass --overwrite to start over, or another --out")
        self.meta = meta
        self.embeddings = self.group[schema.EMBEDDINGS]
        self.scales = self.group[schema.EMBEDDING_SCALE] if meta.memory_dtype == "int8" else None
        self.rows = self.group[schema.EMBEDDING_ROW]
        self.done = self.group[schema.WINDOW_DONE]

    def windows_done(self) -> np.ndarray:
        return np.asarray(self.done[:], dtype=bool)

    def reset_windows(self, windows: list[int]) -> None:
        """Mark windows not written, so that the next `encode` of this store writes them again."""
        for window in windows:
            self.done[window] = False

    def write_window(self, window: int, values: np.ndarray, rows: np.ndarray, scales: np.ndarray | None = None) -> None:
        """The window's distinct haplotypes' values [u, L, d] in the store's dtype (and scales [L] for int8),
        every haplotype's row among them (rows [H]); then mark the window done. A full or read-only disk is a
        UserError naming the store (which stays incomplete, and resumes)."""
        if self.scales is not None and scales is None:
            raise ValueError("an int8 store needs a scale a site")
        if rows.shape != (self.meta.n_haplotypes,) or rows.min() < 0 or rows.max() != values.shape[0] - 1:
            raise ValueError("rows must map every haplotype to a row of values, the last row included")
        # whole chunks (a sharded window: its whole shard), so a write never reads back what was there, which
        # may be damaged (`ragprep inspect --verify --repair`)
        block, n_haplotypes = self.meta.hap_block, self.meta.n_haplotypes
        stop = n_haplotypes if self.meta.sharded else min(n_haplotypes, -(-values.shape[0] // block) * block)
        whole = np.zeros((stop, *values.shape[1:]), dtype=values.dtype)
        whole[:values.shape[0]] = values
        try:
            self.embeddings[window, :stop] = whole
            if self.scales is not None:
                self.scales[window] = scales
            self.rows[window] = rows.astype(np.int32)
            self.done[window] = True
        except OSError as err:
            user_error = environment_error(err, self.url)
            if user_error is None:
                raise
            raise UserError(self.url, f"cannot write window {window}: {user_error.problem}",
                            f"{user_error.fix}; the store stays incomplete: re-run the same command to finish it") from None
