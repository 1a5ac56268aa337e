"""Open and validate a store, and read what the trainer needs without touching other windows.

Neighbour embeddings come back as a MemoryBlock (stored dtype, plus int8 scales); callers dequantise where
it is cheapest (on the device). A window's chunks of an unsharded store on local disk are read from their files
directly, checked against their crc32c as zarr checks them: uncompressed through np.memmap (zero-copy), zstd
decoded by numcodecs (a third of zarr's time a window: no event-loop round trip); other stores through zarr, one
window's chunks at a time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property, lru_cache

import google_crc32c
import numpy as np
import zarr
from numcodecs import Zstd
from zarr.codecs import Crc32cCodec

from stores import schema
from stores.errors import UserError
from stores.plan import WindowPlan
from stores.quantize import dequantize_int8
from stores.writer import is_local, local_path

ZSTD = Zstd()  # decodes any level: the stores' chunks as zarr's ZstdCodec wrote them

REQUIRED = (
    schema.VARIANT_POSITION, schema.VARIANT_ALLELE, schema.VARIANT_AF, schema.SAMPLE_ID, schema.CALL_GENOTYPE,
    schema.WINDOW_START, schema.WINDOW_LENGTH, schema.WINDOW_CORE_START, schema.WINDOW_CORE_END,
    schema.WINDOW_DONE, schema.EMBEDDINGS,
)


@dataclass
class MemoryBlock:
    """Embeddings of some haplotypes in one window: values [n, L, d] (float16 or int8), scales [n, L] for int8."""

    values: np.ndarray
    scales: np.ndarray | None = None

    def dequantize(self) -> np.ndarray:
        if self.scales is None:
            return self.values.astype(np.float32)
        return dequantize_int8(self.values, self.scales)


class EmbeddingStore:
    """Read access to one store. Use `open_store`, which validates it first."""

    def __init__(self, url: str, storage_options: dict | None = None, use_mmap: bool = True) -> None:
        self.url = str(url)
        try:
            self.group = zarr.open_group(self.url, mode="r", storage_options=storage_options)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
            raise UserError(url, "no ragsnv store there", "create one with `ragprep encode`") from None
        attrs = self.group.attrs.get(schema.ATTRS_KEY)
        if not isinstance(attrs, dict):
            raise UserError(url, "a Zarr group but not a ragsnv store", "create one with `ragprep encode`")
        version = attrs.get("format_version")
        if version not in schema.READABLE_VERSIONS:
            raise UserError(url, f"store format version {version}, this ragsnv reads versions "
                            f"{', '.join(map(str, schema.READABLE_VERSIONS))}", "re-encode it with `ragprep encode --overwrite`")
        required = REQUIRED + ((schema.EMBEDDING_ROW,) if version >= 2 else ())
        missing = [name for name in required if name not in self.group]
        if missing:
            raise UserError(url, f"store lacks arrays {missing}", "re-encode it with `ragprep encode --overwrite`")
        self.meta = schema.StoreMeta.from_dict(attrs)
        self._arrays: dict[str, zarr.Array] = {}  # opened once each (`read`)
        self._check_plan()
        self.embeddings = self.group[schema.EMBEDDINGS]
        self.scales = self.group[schema.EMBEDDING_SCALE] if self.meta.memory_dtype == "int8" else None
        self.rows = self.group.get(schema.EMBEDDING_ROW)
        self.local_chunks = use_mmap and is_local(self.url) and not self.meta.sharded  # chunk files read directly
        self.mmap = self.local_chunks and self.meta.compressor == "none"
        self._window_rows = lru_cache(maxsize=1024)(self._read_rows)
        self._site_scales = lru_cache(maxsize=1024)(
            lambda window: self._chunk_file(schema.EMBEDDING_SCALE, window) if self.local_chunks
            else self.read(schema.EMBEDDING_SCALE, window, window))
        self._chunk = lru_cache(maxsize=8192)(self._chunk_file)  # memory-mapped chunks, verified once
        self._decoded = threading.local()  # the chunks of the window read last, per thread (see _block)

    def read(self, name: str, selection: object = slice(None), window: int | None = None) -> np.ndarray:
        """`group[name][selection]` as numpy; stored bytes that fail their checksum (or their decompression) are a
        UserError naming the store, the array and the window, with the fix."""
        try:
            return np.asarray(self._array(name)[selection])
        except (ValueError, RuntimeError) as err:
            if not is_corruption(err):
                raise
            raise self.damaged(name, window) from None

    def _array(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    def damaged(self, name: str, window: int | None) -> UserError:
        """The error for a chunk of `name` whose bytes are not what was written."""
        if window is not None:
            return UserError(self.url, f"{name} of window {window} fails its checksum (the bytes on disk changed "
                             "after they were written)", f"run `ragprep inspect {self.url} --verify --repair`, then "
                             "the same `ragprep encode` again: it re-encodes the damaged windows", place=f"window {window}")
        return UserError(self.url, f"{name} fails its checksum (the bytes on disk changed after they were written)",
                         "encode the panel again into a new store (`ragprep encode ... --overwrite`)")

    @cached_property
    def checksummed(self) -> bool:
        """Whether every chunk carries a crc32c checksum (format 2); format 1 stores are unchecked."""
        return any(isinstance(codec, Crc32cCodec) for codec in self.embeddings.compressors)

    def _check_plan(self) -> None:
        """The window arrays (kept for readers outside ragsnv) must say what the plan in the attributes says."""
        plan = WindowPlan.from_dict(self.meta.window)
        expected = {schema.WINDOW_START: plan.starts, schema.WINDOW_LENGTH: plan.lengths,
                    schema.WINDOW_CORE_START: plan.core_starts, schema.WINDOW_CORE_END: plan.core_ends}
        for name, values in expected.items():
            if not np.array_equal(self.read(name), values):
                raise UserError(self.url, f"{name} disagrees with the window plan {plan.to_dict()}",
                                "re-encode the store with `ragprep encode --overwrite`")

    # --- shape and completeness -------------------------------------------------------------------------
    @cached_property
    def plan(self) -> WindowPlan:
        """The window plan the store was encoded with: every stage takes spans, cores and coverage from it."""
        return WindowPlan.from_dict(self.meta.window)

    @property
    def n_windows(self) -> int:
        return self.plan.n_windows

    @property
    def n_haplotypes(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def d_memory(self) -> int:
        return int(self.embeddings.shape[3])

    def windows_done(self) -> np.ndarray:
        return self.read(schema.WINDOW_DONE).astype(bool)

    @property
    def is_complete(self) -> bool:
        return bool(self.windows_done().all())

    # --- panel ------------------------------------------------------------------------------------------
    @cached_property
    def contig(self) -> str:
        return str(self.read(schema.CONTIG_ID)[0])

    @cached_property
    def positions(self) -> np.ndarray:
        return self.read(schema.VARIANT_POSITION)

    @cached_property
    def alleles_ref_alt(self) -> np.ndarray:
        """str [variants, 2]: REF, ALT."""
        return self.read(schema.VARIANT_ALLELE)

    @cached_property
    def af(self) -> np.ndarray:
        return self.read(schema.VARIANT_AF)

    @cached_property
    def sample_ids(self) -> np.ndarray:
        return self.read(schema.SAMPLE_ID)

    def genetic_positions(self) -> np.ndarray:
        """float64 [variants]: each site's genetic position in cM (the map given to `ragprep encode
        --genetic-map`, else 1 cM/Mb)."""
        if schema.VARIANT_GENETIC_POSITION in self.group:
            return self.read(schema.VARIANT_GENETIC_POSITION).astype(np.float64)
        return self.positions.astype(np.float64) * schema.UNIFORM_CM_PER_BP

    def alleles(self, sites: slice = slice(None)) -> np.ndarray:
        """int8 [haplotypes, sites]: the panel's alleles (0 REF, 1 ALT), haplotype-major; haplotype h is allele
        h % 2 of sample h // 2."""
        calls = self.read(schema.CALL_GENOTYPE, sites)
        return np.ascontiguousarray(calls.reshape(calls.shape[0], -1).T)

    # --- embeddings -------------------------------------------------------------------------------------
    def read_neighbours(self, window: int, haplotypes: np.ndarray) -> MemoryBlock:
        """Embeddings of `haplotypes` (any order, repeats allowed) in `window`, reading only their chunks. The
        chunks decoded last (one window's, per thread) are kept: consecutive batches of a window share them."""
        ids = np.asarray(haplotypes, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_haplotypes):
            raise IndexError(f"haplotype ids must be in 0..{self.n_haplotypes - 1}")  # a caller's bug
        rows = self.window_rows(window)[ids]
        return MemoryBlock(self._gather(schema.EMBEDDINGS, window, rows), self._scales(window, rows))

    def read_window(self, window: int) -> MemoryBlock:
        """Every haplotype's embeddings in one window: [H, L, d]."""
        rows = self.window_rows(window)
        distinct = int(rows.max()) + 1
        return MemoryBlock(self.read(schema.EMBEDDINGS, (window, slice(0, distinct)), window)[rows],
                           self._scales(window, rows))

    def _scales(self, window: int, rows: np.ndarray) -> np.ndarray | None:
        """float16 [n, L] scales of stored rows (int8): the window's one a site, or (format 1) the rows' own."""
        if self.scales is None:
            return None
        if self.scales.ndim == 3:
            return self._gather(schema.EMBEDDING_SCALE, window, rows)
        return np.repeat(self._site_scales(window)[None], rows.size, axis=0)

    def window_rows(self, window: int) -> np.ndarray:
        """int64 [H]: the embeddings row holding each haplotype in `window` (equal haplotypes share one)."""
        return self._window_rows(window)

    def _read_rows(self, window: int) -> np.ndarray:
        if self.rows is None:  # format 1: one row a haplotype
            return np.arange(self.n_haplotypes, dtype=np.int64)
        if self.local_chunks:
            return self._chunk_file(schema.EMBEDDING_ROW, window).astype(np.int64)
        return self.read(schema.EMBEDDING_ROW, window, window).astype(np.int64)

    def distinct_fraction(self) -> float:
        """Distinct haplotypes a window over all haplotypes, averaged over the windows written (1 in format 1)."""
        done = self.windows_done()
        if self.rows is None or not done.any():
            return 1.0
        rows = self.read(schema.EMBEDDING_ROW)[done]
        return float(((rows.max(axis=1) + 1) / self.n_haplotypes).mean())

    def _gather(self, name: str, window: int, rows: np.ndarray) -> np.ndarray:
        """Stored rows [n] (any order, repeats allowed) of `name` in `window`, one chunk at a time."""
        block = self.meta.hap_block
        blocks = rows // block
        if rows.size and blocks.min() == blocks.max():  # one chunk (most windows): one copy
            first = int(blocks[0])
            return np.asarray(self._block(name, window, first))[rows - first * block]
        dtype, rest = self._chunk_layout(name)
        out = np.empty((rows.size, *rest), dtype=dtype)
        for b in np.unique(blocks):
            picked = np.nonzero(blocks == b)[0]
            out[picked] = self._block(name, window, int(b))[rows[picked] - b * block]
        return out

    def _block(self, name: str, window: int, block: int) -> np.ndarray:
        """One chunk [hap_block, ...] of `name` in `window`: memory-mapped, or decoded (from its file, or through
        zarr) and kept until this thread reads another window."""
        if self.mmap:
            return self._chunk(name, window, block)
        cache = self._decoded.__dict__
        if cache.get("window") != window:
            cache.clear()
            cache["window"] = window
        if (name, block) not in cache:
            size = self.meta.hap_block
            cache[(name, block)] = (self._chunk_file(name, window, block) if self.local_chunks else
                                    self.read(name, (window, slice(block * size, (block + 1) * size)), window))
        return cache[(name, block)]

    def _chunk_layout(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        """dtype and per-haplotype shape of one chunk of `name` (embeddings, or int8 scales)."""
        if name == schema.EMBEDDINGS:
            return np.dtype(self.meta.memory_dtype), (self.plan.length, self.d_memory)
        return np.dtype("float16"), (self.plan.length,)

    def _chunk_file(self, name: str, window: int, block: int = 0) -> np.ndarray:
        """Chunk (window, block) of `name` read from its file, less its window axis and whole (edge chunks are
        stored padded): memory-mapped when uncompressed, else zstd-decoded. Its checksum is verified as zarr
        verifies it; a mismatch, or bytes that do not decompress to the chunk, are `damaged`."""
        array = self._array(name)
        shape, dtype = array.chunks[1:], array.dtype.newbyteorder("<")
        path = local_path(self.url).joinpath(name, "c", str(window), str(block), *["0"] * (len(shape) - 1))
        if not path.exists():  # never written: zarr reads the fill value
            return np.full(shape, array.fill_value, dtype=dtype)
        data = path.read_bytes() if self.checksummed or not self.mmap else b""
        if self.checksummed:
            if google_crc32c.value(data[:-4]).to_bytes(4, "little") != data[-4:]:
                raise self.damaged(name, window)
            data = data[:-4]
        if self.mmap:
            return np.memmap(path, dtype=dtype, mode="r", shape=shape)
        try:
            values = np.frombuffer(ZSTD.decode(data), dtype=dtype)
        except RuntimeError:
            raise self.damaged(name, window) from None
        if values.size != np.prod(shape):
            raise self.damaged(name, window)
        return values.reshape(shape)

    def verify_panel(self) -> list[str]:
        """Read every chunk of the panel and window-plan arrays: the names of those that fail their checksums."""
        failed = []
        for name in sorted(self.group.array_keys()):
            if name in (schema.EMBEDDINGS, schema.EMBEDDING_SCALE, schema.EMBEDDING_ROW):
                continue
            try:
                self.read(name)
            except UserError:
                failed.append(name)
        return failed

    def verify_window(self, window: int) -> bool:
        """Read every stored chunk of one written window (its rows, embeddings and scales): whether all match
        their checksums."""
        try:
            rows = self._read_rows(window)
            self.read(schema.EMBEDDINGS, (window, slice(0, int(rows.max()) + 1)), window)
            if self.scales is not None:
                self.read(schema.EMBEDDING_SCALE, window, window)
        except UserError:
            return False
        return True

    def bytes_on_disk(self) -> int:
        """Stored bytes of the embeddings (and scales)."""
        total = self.embeddings.nbytes_stored()
        return total + (self.scales.nbytes_stored() if self.scales is not None else 0)

    def bytes_per_haplotype_site(self) -> float:
        """Stored bytes over the haplotype-sites of the windows written so far."""
        sites = int(self.plan.lengths[self.windows_done()].sum()) * self.n_haplotypes
        return self.bytes_on_disk() / max(sites, 1)

    def summary(self) -> dict:
        """What `ragprep inspect` reports: format, panel, windows done, encoder, dims, dtype, bytes on disk."""
        meta, done = self.meta, self.windows_done()
        return {
            "store": self.url, "format_version": meta.format_version, "complete": bool(done.all()),
            "contig": self.contig, "samples": int(self.sample_ids.size), "haplotypes": self.n_haplotypes,
            "sites": self.plan.n_sites, "windows_done": int(done.sum()), "windows_total": int(done.size),
            "window_length": self.plan.length, "window_stride": self.plan.stride,
            "encoder_fingerprint": meta.encoder_fingerprint, "encoder_source": meta.encoder_source,
            "d_model": meta.d_model, "d_memory": meta.d_memory, "n_layers": meta.encoder_config.get("n_layers"),
            "n_heads": meta.encoder_config.get("n_heads"), "memory_dtype": meta.memory_dtype,
            "compressor": meta.compressor, "checksums": "crc32c on every chunk" if self.checksummed else
            "none (format 1): unchecked", "sharded": meta.sharded, "distinct_haplotypes": round(self.distinct_fraction(), 3),
            "embedding_bytes_on_disk": self.bytes_on_disk(),
            "bytes_per_haplotype_site": round(self.bytes_per_haplotype_site(), 3), "source": meta.source_path,
            "source_sha256": meta.source_sha256, "tool_version": meta.tool_version,
        }


def is_corruption(err: Exception) -> bool:
    """Whether zarr's error says a chunk's stored bytes are damaged: a checksum mismatch, or (unchecked stores)
    zstd failing to decompress."""
    text = str(err)
    return "checksum do not match" in text or "Zstd decompression error" in text or "Data corruption" in text


def open_store(url: str, require_complete: bool = True, storage_options: dict | None = None,
               use_mmap: bool = True) -> EmbeddingStore:
    """Open and validate a store; an incomplete one is refused unless `require_complete` is False."""
    store = EmbeddingStore(url, storage_options=storage_options, use_mmap=use_mmap)
    if require_complete:
        done = store.windows_done()
        if not done.all():
            raise UserError(url, f"incomplete store ({int(done.sum())} of {done.size} windows encoded)",
                            "re-run the same `ragprep encode` command to finish it (it resumes)")
    return store
