"""Store layout: array names (VCF Zarr names for the panel), the metadata record, and the format version.

A store is one Zarr v3 group = one panel + one encoder:

    contig_id            str   [contigs]                   VCF Zarr
    variant_contig       int16 [variants]                  VCF Zarr (index into contig_id)
    variant_position     int64 [variants]                  VCF Zarr (1-based)
    variant_allele       str   [variants, 2]               VCF Zarr (REF, ALT)
    variant_af           f32   [variants]                  ALT allele frequency of the panel
    sample_id            str   [samples]                   VCF Zarr
    call_genotype        int8  [variants, samples, 2]      VCF Zarr (haplotype h = sample h//2, allele h%2)
    call_genotype_phased bool  [variants, samples]         VCF Zarr
    window_start, window_length, window_core_start, window_core_end   int64 [windows]
    window_done          bool  [windows]  chunk = 1 window: set only after the window's embeddings are written
    embedding_row        int32 [windows, haplotypes]  chunk = 1 window: the embeddings row of haplotype h's window
    embeddings           f16|i8 [windows, haplotypes, L, d]  chunk = (1 window, hap_block rows, L, d)
    embedding_scale      f16   [windows, L]                  int8 only: one scale a site of a window (format 1:
                                                              [windows, haplotypes, L], one a vector)

Haplotypes with the same alleles in a window have the same embeddings there (the encoder sees only the alleles
and the window's allele frequencies), so each window stores its distinct haplotypes once, sorted by their
alleles, in rows 0..u-1 (chunks past them are never written); `embedding_row` maps every haplotype to its
row. Every chunk of every array ends in a crc32c checksum of its stored bytes, verified on every read. Format 1
stores (no `embedding_row`: row h is haplotype h; no checksums) are still read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
ATTRS_KEY = "ragsnv"

CONTIG_ID = "contig_id"
VARIANT_CONTIG = "variant_contig"
VARIANT_POSITION = "variant_position"
VARIANT_ALLELE = "variant_allele"
VARIANT_AF = "variant_af"
SAMPLE_ID = "sample_id"
CALL_GENOTYPE = "call_genotype"
CALL_GENOTYPE_PHASED = "call_genotype_phased"
WINDOW_START = "window_start"
WINDOW_LENGTH = "window_length"
WINDOW_CORE_START = "window_core_start"
WINDOW_CORE_END = "window_core_end"
WINDOW_DONE = "window_done"
EMBEDDINGS = "embeddings"
EMBEDDING_ROW = "embedding_row"
VARIANT_GENETIC_POSITION = "variant_genetic_position"  # optional: cM of each site, from a genetic map

UNIFORM_CM_PER_BP = 1e-6
"""Genetic positions without a map: 1 cM/Mb."""
EMBEDDING_SCALE = "embedding_scale"

HAP_BLOCK = 1024
"""Stored rows a chunk (`--hap-block`): a window's distinct haplotypes compress together (zstd finds what
they share: 1.9x smaller than chunks of 64 rows on 1000 Genomes EUR), and a read decodes at most this many."""

MEMORY_DTYPES = ("float16", "int8")
COMPRESSORS = ("zstd", "none")


@dataclass(frozen=True)
class StoreMeta:
    """Everything that identifies a store's content; kept in the group attributes under ATTRS_KEY."""

    encoder_fingerprint: str
    encoder_config: dict
    encoder_source: str  # "seed:N" or the checkpoint path
    d_model: int
    d_memory: int
    memory_dtype: str
    window: dict  # WindowPlan.to_dict(): length, stride, n_sites
    source_path: str
    source_sha256: str
    region: str | None
    n_haplotypes: int
    hap_block: int = HAP_BLOCK
    compressor: str = "zstd"
    sharded: bool = False
    tool_version: str = "0.0.0"
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.memory_dtype not in MEMORY_DTYPES:
            raise ValueError(f"memory dtype must be one of {MEMORY_DTYPES}, got {self.memory_dtype!r}")
        if self.compressor not in COMPRESSORS:
            raise ValueError(f"compressor must be one of {COMPRESSORS}, got {self.compressor!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> StoreMeta:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def content_key(self) -> dict:
        """The fields two runs must share to write into the same store (resume, shards)."""
        data = self.to_dict()
        data.pop("tool_version")
        return data
