"""Write imputed haplotypes as a sorted, bgzipped, tabix-indexed VCF that bcftools, cyvcf2 and pysam read.

Per site: INFO AF (panel ALT frequency), DR2 (Beagle's estimated dosage r2), IMP (flag: not typed in the
target). Per sample: GT (phased best guess, ALT where a haplotype's probability > 0.5), DS, GP, HDS.

Precision: haplotype probabilities are rounded to 3 decimals first (HDS), and everything else is derived from
those rounded values in whole thousandths, so the printed fields agree exactly: DS = HDS1 + HDS2 =
GP[1] + 2 * GP[2], GP sums to 1, and GT is ALT exactly where HDS > 0.5. GP[2] = HDS1 * HDS2 (the two
haplotypes taken as independent) rounded to 3 decimals; GP[1] and GP[0] then follow from DS and the sum, so
each is within 0.001 of its unrounded value. Beagle prints 2 decimals; 3 keeps rare-variant dosages apart.
Values print without trailing zeros ("0", "0.25", "1").
"""

from __future__ import annotations

import gzip
import itertools
import shutil
import struct
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
import pysam

from ragtrain.metrics import dr2_from_haplotypes
from stores.atomic import atomic_path
from stores.errors import UserError, check_writable, output_error
from stores.reader import EmbeddingStore

SCALE = 1000  # printed precision: thousandths
FORMAT = "GT:DS:GP:HDS"
CHUNK_SITES = 256  # sites formatted at a time (bounds memory at ~CHUNK_SITES x samples strings)


BGZF_BLOCK = 0xFF00
"""Uncompressed bytes a BGZF block, as htslib fills them (a block's compressed size stays under 64 KiB)."""
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
"""The empty block that ends every BGZF file (SAM/BAM specification, 4.1.2)."""


def bgzf_block(data: bytes) -> bytes:
    """One BGZF block (a gzip member with the BC extra field giving its size) of up to BGZF_BLOCK bytes, deflated
    as htslib deflates (level 6, raw window of 15 bits)."""
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    deflated = packer.compress(data) + packer.flush()
    header = struct.pack("<BBBBIBBHBBHH", 31, 139, 8, 4, 0, 0, 255, 6, 66, 67, 2, len(deflated) + 25)
    return header + deflated + struct.pack("<II", zlib.crc32(data), len(data))


class BgzfWriter:
    """A bgzipped file written as htslib's bgzf writes one (the same blocks), its blocks deflated in worker
    threads while the caller formats the next lines (zlib lets go of the GIL: pysam's BGZFile deflates in the
    caller's thread). Blocks reach the file in order; at most `ahead` wait at once."""

    def __init__(self, path: str | Path, threads: int = 2, ahead: int = 16) -> None:
        self._file = open(path, "wb")  # noqa: SIM115 (the writer's own: closed by close() or on an error)
        self._pool = ThreadPoolExecutor(max_workers=threads)
        self._pending: deque[Future] = deque()
        self._buffer = bytearray()
        self._ahead = ahead

    def write(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= BGZF_BLOCK:
            self._submit(bytes(self._buffer[:BGZF_BLOCK]))
            del self._buffer[:BGZF_BLOCK]

    def _submit(self, block: bytes) -> None:
        self._pending.append(self._pool.submit(bgzf_block, block))
        while len(self._pending) > self._ahead:
            self._file.write(self._pending.popleft().result())

    def close(self) -> None:
        """Write what is left and the end-of-file block (on success only: an aborted file has no EOF block)."""
        try:
            if self._buffer:
                self._submit(bytes(self._buffer))
                self._buffer.clear()
            while self._pending:
                self._file.write(self._pending.popleft().result())
            self._file.write(BGZF_EOF)
        finally:
            self._abort()

    def _abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self.close()
        else:
            self._abort()


@dataclass
class Sites:
    """The panel sites an imputed VCF covers: one contig, any order (records are written sorted)."""

    contig: str
    positions: np.ndarray  # int [V], 1-based
    ref: np.ndarray  # str [V]
    alt: np.ndarray  # str [V]
    af: np.ndarray  # float [V]: panel ALT allele frequency
    contig_length: int | None = None

    @classmethod
    def from_store(cls, store: EmbeddingStore, contig_length: int | None = None) -> Sites:
        """The store's panel sites; the store keeps no contig length, so pass one (e.g. Targets.contig_length)."""
        ref_alt = np.asarray(store.alleles_ref_alt)
        return cls(store.contig, np.asarray(store.positions), ref_alt[:, 0], ref_alt[:, 1], np.asarray(store.af),
                   contig_length)


def write_imputed_vcf(
    out: str | Path,
    sites: Sites | EmbeddingStore,
    sample_ids: np.ndarray | list[str],
    hap_alt_prob: np.ndarray,
    typed: np.ndarray | None = None,
    observed: np.ndarray | None = None,
    source: str = "ragsnv",
    haploid: np.ndarray | None = None,
    join_multiallelic: bool = False,
) -> Path:
    """Write `out` (.vcf.gz) and its tabix index `out`.tbi; returns `out`.

    sites: a Sites or the store itself (its panel sites, AF and contig).
    sample_ids: str [N]; haplotype h is allele (h % 2) of sample (h // 2), as everywhere in ragsnv.
    hap_alt_prob: float [sites, 2N], probability that each haplotype carries ALT, in the panel's site order.
    typed: bool [sites], sites the target typed (no IMP flag); None: every site is imputed.
    observed: int8 [sites, 2N], the target's own alleles (Targets.alleles: -1 untyped or missing). At typed
      sites observed alleles replace the model's probabilities (written as 0/1); missing calls keep them.
    haploid: bool [sites, N], calls written haploid (GT a, DS and HDS the first haplotype's, GP two values, as
      Beagle writes chrX males), their second haplotype left out of DR2; None: every call diploid.
    join_multiallelic: sites at one position with the same REF (a multiallelic record split on read) written
      back as one record (`_joined_record`); else each site its own record, as `bcftools norm -m -` splits.
    With a Targets `t`: write_imputed_vcf(out, store, t.sample_ids, probs, t.typed, t.alleles).
    """
    out = check_output(out)
    if isinstance(sites, EmbeddingStore):
        sites = Sites.from_store(sites)
    sample_ids = [str(s) for s in sample_ids]
    probs = np.asarray(hap_alt_prob)
    n_sites = len(sites.positions)
    _check_shapes(sites, len(sample_ids), probs, typed, observed)
    typed = np.zeros(n_sites, dtype=bool) if typed is None else np.asarray(typed, dtype=bool)
    order = np.argsort(np.asarray(sites.positions), kind="stable")
    # chunks of sorted sites, never cutting a run of sites that are joined into one record
    joined_with_previous = np.zeros(n_sites, dtype=bool)
    if join_multiallelic and n_sites > 1:
        positions, refs = np.asarray(sites.positions)[order], np.asarray(sites.ref)[order].astype(object)
        joined_with_previous[1:] = (positions[1:] == positions[:-1]) & (refs[1:] == refs[:-1])
    starts = [0]
    while starts[-1] + CHUNK_SITES < n_sites:
        cut = starts[-1] + CHUNK_SITES
        while cut < n_sites and joined_with_previous[cut]:
            cut += 1
        if cut == n_sites:
            break
        starts.append(cut)
    bounds = list(zip(starts, starts[1:] + [n_sites]))
    sample_fields = _SampleFields()

    verbosity = pysam.set_verbosity(0)  # a failed write is our one error line, not htslib's as well
    try:  # the index renamed into place first, then the VCF: a VCF is never there without its index
        with atomic_path(out) as tmp, atomic_path(f"{out}.tbi", out) as tmp_index:
            with BgzfWriter(tmp) as handle:
                handle.write(_header(sites, sample_ids, source).encode())
                for start, stop in bounds:
                    rows = order[start:stop]
                    chunk = _final_probs(probs[rows], typed[rows], None if observed is None else observed[rows])
                    single = None if haploid is None else np.asarray(haploid[rows], dtype=bool)
                    present = chunk
                    if single is not None:  # a haploid call's second haplotype is not there
                        present = chunk.copy()
                        present[:, 1::2][single] = np.nan
                    dr2 = dr2_from_haplotypes(present)
                    columns = sample_fields.columns(np.rint(chunk * SCALE).astype(np.int64), single)
                    lines = [
                        f"{sites.contig}\t{int(sites.positions[i])}\t.\t{sites.ref[i]}\t{sites.alt[i]}\t.\tPASS\t"
                        f"AF={_trim(f'{float(sites.af[i]):.4f}')};DR2={_milli(round(float(r2) * SCALE))}"
                        f"{'' if typed[i] else ';IMP'}\t{FORMAT}\t{column}\n"
                        for i, r2, column in zip(rows.tolist(), dr2.tolist(), columns)
                    ]
                    joined = joined_with_previous[start:stop]
                    for first in np.flatnonzero(~joined[:-1] & joined[1:]).tolist():  # runs of joined sites
                        last = first + 1
                        while last + 1 < joined.size and joined[last + 1]:
                            last += 1
                        run = slice(first, last + 1)
                        lines[first] = _joined_record(sites, rows[run], chunk[run], dr2[run], typed[rows[run]],
                                                      None if single is None else single[first])
                        for other in range(first + 1, last + 1):
                            lines[other] = ""
                    handle.write("".join(lines).encode())
            pysam.tabix_index(str(tmp), preset="vcf", force=True, index=str(tmp_index))
    finally:
        pysam.set_verbosity(verbosity)
    return out


def _joined_record(sites: Sites, rows: np.ndarray, probs: np.ndarray, dr2: np.ndarray, typed: np.ndarray,
                   haploid: np.ndarray | None) -> str:
    """One multiallelic record line from k sites at one position with one REF (probs [k, 2N] ALT probabilities
    a haplotype). A haplotype's allele probabilities: each ALT's (scaled down where they sum past 1), REF the
    rest; GT the likeliest allele, DS and HDS one value an ALT, GP one a genotype in VCF order."""
    p = probs.T.astype(np.float64)  # [2N, k]
    p = p / np.maximum(p.sum(axis=1, keepdims=True), 1.0)
    q = np.concatenate([1.0 - p.sum(axis=1, keepdims=True), p], axis=1)  # [2N, k + 1]
    alleles = q.argmax(axis=1)
    single = np.zeros(q.shape[0] // 2, dtype=bool) if haploid is None else haploid
    fields = []
    for sample in range(q.shape[0] // 2):
        one, two = q[2 * sample], q[2 * sample + 1]
        if single[sample]:
            fields.append(f"{alleles[2 * sample]}:{_thousandths(one[1:])}:{_thousandths(one)}:"
                          f"{_thousandths(one[1:])}")
            continue
        gp = [one[a] * two[b] + (one[b] * two[a] if a != b else 0.0) for b in range(q.shape[1]) for a in range(b + 1)]
        fields.append(f"{alleles[2 * sample]}|{alleles[2 * sample + 1]}:{_thousandths(one[1:] + two[1:])}:"
                      f"{_thousandths(gp)}:{_thousandths(np.concatenate([one[1:], two[1:]]))}")
    first = int(rows[0])
    info = (f"AF={','.join(_trim(f'{float(sites.af[i]):.4f}') for i in rows.tolist())};"
            f"DR2={','.join(_milli(round(float(r2) * SCALE)) for r2 in dr2.tolist())}"
            f"{'' if typed.all() else ';IMP'}")
    return (f"{sites.contig}\t{int(sites.positions[first])}\t.\t{sites.ref[first]}\t"
            f"{','.join(str(sites.alt[i]) for i in rows.tolist())}\t.\tPASS\t{info}\t{FORMAT}\t"
            + "\t".join(fields) + "\n")


def _thousandths(values) -> str:
    """Comma-joined values in [0, 2] as printed everywhere in the file (thousandths, no trailing zeros)."""
    return ",".join(_NUMBERS[np.clip(np.rint(np.asarray(values) * SCALE).astype(np.int64), 0, 2 * SCALE)])


def concatenate_vcfs(parts: list[Path], out: str | Path) -> Path:
    """`out` (.vcf.gz, tabix-indexed): imputed VCFs of different contigs, in order, as one file under the first
    one's header with every part's ##contig line."""
    out = Path(out)
    headers = []
    for part in parts:
        with gzip.open(part, "rt") as handle:
            headers.append(list(itertools.takewhile(lambda text: text.startswith("#"), handle)))
    contigs = [line for header in headers for line in header if line.startswith("##contig=")]
    first = headers[0]
    at = next(i for i, line in enumerate(first) if line.startswith("##contig="))
    header = first[:at] + contigs + [line for line in first[at:] if not line.startswith("##contig=")]
    verbosity = pysam.set_verbosity(0)
    try:
        with atomic_path(out) as tmp, atomic_path(f"{out}.tbi", out) as tmp_index:
            with BgzfWriter(tmp) as handle:
                handle.write("".join(header).encode())
                for part in parts:
                    with gzip.open(part, "rb") as records:
                        for line in records:  # past the header, then the records in blocks
                            if not line.startswith(b"#"):
                                handle.write(line)
                                break
                        shutil.copyfileobj(records, handle)
            pysam.tabix_index(str(tmp), preset="vcf", force=True, index=str(tmp_index))
    finally:
        pysam.set_verbosity(verbosity)
    return out


def check_output(out: str | Path) -> Path:
    """The imputed VCF's path, checked before any work: a .vcf.gz name, not a folder, in a folder we can write."""
    out = Path(out)
    if not out.name.endswith(".vcf.gz"):
        raise UserError(out, "the output must be a bgzipped VCF", "name it like imputed.vcf.gz")
    if out.is_dir():
        raise UserError(out, "is a folder", "give a file name like imputed.vcf.gz")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if (user_error := output_error(err, out)) is None:
            raise
        raise user_error from None
    check_writable(out.parent, "choose an --out in a writable folder with free space", output=out)
    return out


def _check_shapes(sites: Sites, n_samples: int, probs: np.ndarray, typed: np.ndarray | None,
                  observed: np.ndarray | None) -> None:
    n_sites = len(sites.positions)
    expected = (n_sites, 2 * n_samples)
    if probs.shape != expected:
        raise ValueError(f"hap_alt_prob has shape {probs.shape}; expected (sites, 2 * samples) = {expected}")
    if observed is not None and np.shape(observed) != expected:
        raise ValueError(f"observed has shape {np.shape(observed)}; expected {expected}")
    if typed is not None and np.shape(typed) != (n_sites,):
        raise ValueError(f"typed has shape {np.shape(typed)}; expected ({n_sites},)")
    if np.isin(np.asarray(sites.ref), ["", "."]).any() or np.isin(np.asarray(sites.alt), ["", "."]).any():
        raise ValueError("REF/ALT must be real alleles, not '' or '.'")


def _final_probs(probs: np.ndarray, typed: np.ndarray, observed: np.ndarray | None) -> np.ndarray:
    """float32 [sites, 2N] of some sites: the model's probabilities, observed alleles at typed sites."""
    probs = probs.astype(np.float32, copy=False)
    if not np.isfinite(probs).all() or probs.min(initial=0) < 0 or probs.max(initial=0) > 1:
        raise ValueError("hap_alt_prob must be probabilities in [0, 1] (no NaN)")
    if observed is None:
        return probs
    use = (observed >= 0) & typed[:, None]
    return np.where(use, observed, probs).astype(np.float32, copy=False)


def _header(sites: Sites, sample_ids: np.ndarray, source: str) -> str:
    length = f",length={int(sites.contig_length)}" if sites.contig_length else ""
    lines = [
        "##fileformat=VCFv4.2",
        '##FILTER=<ID=PASS,Description="All filters passed">',
        f"##source={source}",
        f"##contig=<ID={sites.contig}{length}>",
        '##INFO=<ID=AF,Number=A,Type=Float,Description="ALT allele frequency in the reference panel">',
        ('##INFO=<ID=DR2,Number=A,Type=Float,Description="Dosage R-Squared: estimated squared correlation '
         'between estimated ALT dose and true ALT dose (Beagle DR2)">'),
        '##INFO=<ID=IMP,Number=0,Type=Flag,Description="Imputed marker (not typed in the target)">',
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype (phased best guess)">',
        '##FORMAT=<ID=DS,Number=A,Type=Float,Description="Estimated ALT dose [P(RA) + 2*P(AA)]">',
        '##FORMAT=<ID=GP,Number=G,Type=Float,Description="Estimated genotype probabilities P(RR), P(RA), P(AA)">',
        '##FORMAT=<ID=HDS,Number=.,Type=Float,Description="Estimated haplotype ALT doses">',
        "#" + "\t".join(["CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *sample_ids]),
    ]
    return "\n".join(lines) + "\n"


class _SampleFields:
    """Tab-joined sample fields of each site from haplotype ALT probabilities in thousandths [sites, 2N]; a call
    marked in `haploid` [sites, N] is written from its first haplotype alone.

    A sample's field depends only on its two rounded probabilities (or one, haploid): each distinct code is
    formatted once, with numpy string operations, the first time a chunk of sites meets it, and looked up after
    that (sorting every chunk's codes for its distinct ones took a third of the writer's time)."""

    CODES = (SCALE + 1) ** 2 + SCALE + 1  # pairs of thousandths, then haploid calls past every pair's

    def __init__(self) -> None:
        self._index = np.full(self.CODES, -1, dtype=np.int64)
        self._fields = np.empty(0, dtype=object)

    def columns(self, milli: np.ndarray, haploid: np.ndarray | None = None) -> list[str]:
        codes = milli[:, 0::2] * (SCALE + 1) + milli[:, 1::2]
        if haploid is not None:
            codes = np.where(haploid, (SCALE + 1) ** 2 + milli[:, 0::2], codes)
        index = self._index[codes]
        if (index < 0).any():
            new = np.unique(codes[index < 0])
            single = new >= (SCALE + 1) ** 2
            fields = np.empty(new.shape, dtype=object)
            fields[~single] = _genotype_fields(new[~single] // (SCALE + 1), new[~single] % (SCALE + 1))
            fields[single] = _haploid_fields(new[single] - (SCALE + 1) ** 2)
            self._index[new] = np.arange(self._fields.size, self._fields.size + new.size)
            self._fields = np.concatenate([self._fields, fields])
            index = self._index[codes]
        return ["\t".join(row) for row in self._fields[index].tolist()]


def _haploid_fields(h: np.ndarray) -> np.ndarray:
    """GT:DS:GP:HDS strings of haploid calls from the ALT probability in thousandths: GT 0 or 1, GP P(R), P(A)."""
    n = _NUMBERS
    return np.where(h > SCALE // 2, "1", "0") + ":" + n[h] + ":" + n[SCALE - h] + "," + n[h] + ":" + n[h]


def _genotype_fields(h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
    """GT:DS:GP:HDS strings from the two haplotype ALT probabilities in thousandths (int arrays).

    GP[2] = round(h1 * h2), GP[1] = DS - 2 GP[2], GP[0] = 1 - GP[1] - GP[2]: exact in thousandths.
    """
    gp2 = (h1 * h2 + SCALE // 2) // SCALE
    gp1 = h1 + h2 - 2 * gp2
    gp0 = SCALE - h1 - h2 + gp2
    gt = _GT[2 * (h1 > SCALE // 2) + (h2 > SCALE // 2)]
    n = _NUMBERS
    return (gt + ":" + n[h1 + h2] + ":" + n[gp0] + "," + n[gp1] + "," + n[gp2] + ":" + n[h1] + "," + n[h2])


def _milli(k: int) -> str:
    """k thousandths as a short decimal: 0 -> '0', 250 -> '0.25', 1000 -> '1', 1999 -> '1.999'."""
    whole, frac = divmod(int(k), SCALE)
    return str(whole) if frac == 0 else f"{whole}.{frac:03d}".rstrip("0")


def _trim(text: str) -> str:
    return text.rstrip("0").rstrip(".") if "." in text else text


_GT = np.array(["0|0", "0|1", "1|0", "1|1"])
_NUMBERS = np.array([_milli(k) for k in range(2 * SCALE + 1)])  # 0 .. 2 in thousandths, as printed
