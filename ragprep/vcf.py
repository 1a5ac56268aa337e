"""Read phased, diploid, biallelic sites of one contig from a VCF/BCF with cyvcf2."""

from __future__ import annotations

import functools
import gzip
import itertools
import os
import re
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from cyvcf2 import VCF, Variant

from ragprep.progress import record_spinner
from stores.errors import UserError

MISSING = -1
_ACGT = re.compile(r"[ACGTacgt]+")
Multiallelic = Literal["split", "skip", "error"]


@dataclass
class Panel:
    """Haplotypes of one contig. Haplotype h is allele (h % 2) of sample (h // 2)."""

    path: str
    contig: str
    positions: np.ndarray  # int64 [V], 1-based, non-decreasing (records at one position differ in REF/ALT)
    ref: np.ndarray  # str [V]
    alt: np.ndarray  # str [V]
    sample_ids: np.ndarray  # str [N]
    alleles: np.ndarray  # int8 [V, 2N]: 0 REF, 1 ALT, -1 missing (targets only)
    contig_length: int | None = None
    skipped_multiallelic: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    split_multiallelic: int = 0  # multiallelic records split into one biallelic site an ALT allele
    split_examples: list[str] = field(default_factory=list)
    other_alleles: int = 0  # kept records with a symbolic, '*' or non-ACGT allele (imputed like any biallelic marker)
    other_examples: list[str] = field(default_factory=list)
    unphased: np.ndarray | None = None  # bool [V, N]: heterozygous calls without phase (read with allow_unphased)
    haploid: np.ndarray | None = None  # bool [V, N]: haploid calls (read with keep_ploidy), both haplotypes the allele

    @property
    def n_variants(self) -> int:
        return int(self.alleles.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.sample_ids.shape[0])

    @property
    def n_haplotypes(self) -> int:
        return int(self.alleles.shape[1])

    @property
    def af(self) -> np.ndarray:
        """ALT allele frequency per site over observed haplotypes (float32 [V])."""
        observed = self.alleles >= 0
        alt = (self.alleles == 1).sum(axis=1)
        return (alt / np.maximum(observed.sum(axis=1), 1)).astype(np.float32)

    def summary(self) -> str:
        text = (
            f"{self.path}: {self.n_samples} samples ({self.n_haplotypes} haplotypes), "
            f"{self.n_variants} biallelic sites on {self.contig}"
        )
        if self.positions.size:
            text += f" ({self.positions[0]}-{self.positions[-1]})"
        if self.skipped_multiallelic:
            text += (
                f"; skipped {self.skipped_multiallelic} multiallelic records"
                f" (first: {', '.join(self.skipped_examples)})"
            )
        if self.split_multiallelic:
            text += (
                f"; split {self.split_multiallelic} multiallelic records into biallelic sites, one an ALT allele"
                f" (first: {', '.join(self.split_examples)})"
            )
        if self.other_alleles:
            text += (
                f"; kept {self.other_alleles} records with symbolic, '*' or non-ACGT alleles as biallelic markers"
                f" (first: {', '.join(self.other_examples)})"
            )
        return text


def parse_region(region: str | None) -> tuple[str, int, int] | None:
    """`chr22` or `chr22:1000-2000` (1-based, inclusive) -> (contig, start, end)."""
    if region is None:
        return None
    match = re.fullmatch(r"([^:]+)(?::([\d,]+)-([\d,]+))?", region.strip())
    if not match:
        raise UserError("--region", f"cannot parse region {region!r}", "write it as CONTIG or CONTIG:START-END")
    contig, start, end = match.groups()
    if start is None:
        return contig, 1, 2**62
    return contig, int(start.replace(",", "")), int(end.replace(",", ""))


def open_vcf(path: str) -> VCF:
    """Open a VCF/BCF, turning cyvcf2's failure into a one-line UserError. Every contig the records name is
    declared in the header before any record is parsed (htslib can crash on a malformed record of a contig
    it must add on the fly)."""
    if Path(path).is_dir():
        raise UserError(path, "is a folder, not a VCF", "give the path of a VCF, bgzipped VCF or BCF file")
    in_records = record_contigs(path)
    try:
        vcf = VCF(str(path), lazy=True, threads=1)
    except Exception as err:  # noqa: BLE001 - cyvcf2 raises OSError, sometimes plain Exception
        duplicate = _duplicate_sample(path)
        if duplicate:
            raise UserError(path, f"sample {duplicate} appears twice in the header",
                            "give every sample a unique name (`bcftools reheader -s`)") from None
        raise UserError(
            path, f"not a readable VCF/BCF ({str(err).splitlines()[0][:120]})",
            "check the path and that it is a VCF, bgzipped VCF or BCF",
        ) from None
    declared = set(re.findall(r"^##contig=<ID=([^,>]+)", vcf.raw_header, flags=re.MULTILINE))
    for contig in sorted(set(in_records) - declared):
        vcf.add_to_header(f"##contig=<ID={contig}>")
    return vcf


_CONTIG_NAME = re.compile(r"[0-9A-Za-z!#$%&+./:;?@^_|~-][0-9A-Za-z!#$%&*+./:;=?@^_|~-]*")
"""A contig name as the VCF specification allows it."""


def record_contigs(path: str | Path) -> tuple[str, ...]:
    """The contigs a plain or bgzipped VCF's records name (CHROM), in file order; () for a BCF (its header
    declares them) or a file that is not there (cyvcf2 says so). Read with Python's own zlib, which also catches
    damaged compressed blocks before htslib sees them; kept for the file as it is (size, mtime), so the commands
    that open a file more than once read it once."""
    try:
        stat = os.stat(path)
    except OSError:
        return ()
    if not os.path.isfile(path):  # a folder: open_vcf says so
        return ()
    return _scan_record_contigs(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _scan_record_contigs(path: str, size: int, mtime_ns: int) -> tuple[str, ...]:
    seen: dict[bytes, None] = {}
    last = b""  # the start of the last record read, for the error message
    try:
        with gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb") as handle:
            if handle.read(3) == b"BCF":
                return ()
            handle.seek(0)
            for number, line in enumerate(handle, start=1):
                if line.startswith(b"#"):
                    continue
                if number == 1:  # no header at all: not a VCF, as htslib will say
                    return ()
                tab = line.find(b"\t", 0, 256)
                chrom = line[:tab if tab >= 0 else 256].strip()
                if chrom and chrom not in seen:
                    name = chrom.decode("utf-8", errors="replace")
                    if not _CONTIG_NAME.fullmatch(name):
                        raise UserError(path, f"line {number}: {name[:40]!r} is not a contig name",
                                        "fix or drop the record (the file may be damaged)")
                    seen[chrom] = None
                last = line[:128]
    except (OSError, EOFError, zlib.error) as err:
        fields = last.decode("utf-8", errors="replace").split("\t")
        where = f"record {fields[0]}:{fields[1] if len(fields) > 1 else '?'}" if last else "the header"
        raise UserError(path, f"the file breaks after {where} ({str(err)[:80]}: truncated or corrupt bgzip?)",
                        "re-create it (bgzip / bcftools view -Oz) and check it with `bcftools view`") from None
    return tuple(chrom.decode() for chrom in seen)


def _duplicate_sample(path: str) -> str | None:
    """The first sample name that the #CHROM line of a plain or gzipped VCF repeats (htslib refuses those)."""
    try:
        with gzip.open(path, "rt") if _is_gzip(path) else open(path) as handle:
            for line in itertools.islice(handle, 100_000):
                if line.startswith("#CHROM"):
                    names = line.rstrip("\r\n").split("\t")[9:]
                    seen: set[str] = set()
                    return next((name for name in names if name in seen or seen.add(name)), None)
    except (OSError, UnicodeDecodeError, EOFError, zlib.error):
        return None
    return None


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def read_panel(
    path: str,
    region: str | None = None,
    multiallelic: Multiallelic = "split",
    allow_missing: bool = False,
    what: str = "panel",
    allow_unphased: bool = False,
    keep_ploidy: bool = False,
) -> Panel:
    """Read phased records (diploid or haploid) of one contig into a Panel; a multiallelic record is split into one
    biallelic site an ALT allele (as `bcftools norm -m -` splits it), skipped, or refused (`multiallelic`).

    `allow_missing` keeps missing alleles as -1 (targets); a panel must be complete. `allow_unphased` keeps
    unphased heterozygous calls (alleles in the order written) and marks them in `Panel.unphased` (targets,
    which impute phases); a panel must be phased. A haploid call (chrX outside the PARs in males, chrY, MT) is
    read as a homozygous pair of haplotypes carrying its allele; `keep_ploidy` marks them in `Panel.haploid`
    (targets, whose output is written haploid there).
    Every problem raises UserError naming the file, contig:pos, the sample where it applies, and the fix.
    """
    vcf = open_vcf(path)
    samples = np.asarray(vcf.samples, dtype=str)
    if samples.size == 0:
        raise UserError(path, f"the {what} has no samples", "give a VCF with phased FORMAT/GT sample columns")
    wanted = parse_region(region)
    records = _records(vcf, path, region, wanted)
    contig_lengths = dict(zip(vcf.seqnames, vcf.seqlens)) if _has_lengths(vcf) else {}

    positions: list[int] = []
    refs: list[str] = []
    alts: list[str] = []
    rows: list[np.ndarray] = []
    loose: list[np.ndarray] = []
    single: list[np.ndarray] = []
    contig: str | None = None
    skipped = other = split = 0
    skipped_examples: list[str] = []
    split_examples: list[str] = []
    at_position: set[tuple[str, str]] = set()  # REF/ALT of the sites read at the last position
    other_examples: list[str] = []
    with record_spinner(f"reading {path}") as tick:
        for rec in checked_records(records, path):
            where = f"{rec.CHROM}:{rec.POS}"
            if wanted is not None and (rec.CHROM != wanted[0] or not wanted[1] <= rec.POS <= wanted[2]):
                continue
            if contig is None:
                contig = rec.CHROM
            elif rec.CHROM != contig:
                raise UserError(
                    path, f"records of a second contig ({rec.CHROM} after {contig}) and no --region",
                    f"pass --region {contig} (one contig a store), or split the file by contig",
                    where,
                )
            if positions and rec.POS < positions[-1]:
                raise UserError(
                    path, f"records are not sorted (this one follows {contig}:{positions[-1]})",
                    "sort it with `bcftools sort -Oz`", where,
                )
            if not positions or rec.POS != positions[-1]:
                at_position = set()
            if len(rec.ALT) > 1 and multiallelic == "skip":
                skipped += 1
                if len(skipped_examples) < 3:
                    skipped_examples.append(where)
                continue
            if len(rec.ALT) > 1 and multiallelic == "error":
                raise UserError(
                    path, f"multiallelic record (ALT {','.join(rec.ALT)})",
                    "split or drop such records (`bcftools norm -m -any`, `bcftools view -m2 -M2`) "
                    "or use --multiallelic split (the default) or skip", where,
                )
            sites = biallelic_sites(rec, path)
            if not sites:
                raise UserError(
                    path, "record without an ALT allele (monomorphic site)",
                    "drop such records (`bcftools view -m2 -M2`)", where,
                )
            if len(sites) > 1:
                split += 1
                if len(split_examples) < 3:
                    split_examples.append(where)
            for alt, gt in sites:
                if (rec.REF, alt) in at_position:
                    raise UserError(
                        path, f"duplicate record (a second {rec.REF}/{alt} at the same position)",
                        "keep one record a site and allele, e.g. `bcftools norm -d exact`", where,
                    )
                at_position.add((rec.REF, alt))
                if not (_ACGT.fullmatch(rec.REF) and _ACGT.fullmatch(alt)):
                    other += 1
                    if len(other_examples) < 3:
                        other_examples.append(where)
                alleles, unphased, haploid = _haplotype_row(gt, samples, path, where, allow_missing, allow_unphased)
                rows.append(alleles)
                if allow_unphased:
                    loose.append(unphased)
                if keep_ploidy:
                    single.append(haploid)
                positions.append(rec.POS)
                refs.append(rec.REF)
                alts.append(alt)
            tick()
    if not rows:
        scope = f" in region {region}" if region else ""
        raise UserError(path, f"the {what} has no biallelic records{scope}", "check the file and --region")
    return Panel(
        path=str(path),
        contig=str(contig),
        positions=np.asarray(positions, dtype=np.int64),
        ref=np.asarray(refs, dtype=str),
        alt=np.asarray(alts, dtype=str),
        sample_ids=samples,
        alleles=np.stack(rows),
        contig_length=contig_lengths.get(contig),
        skipped_multiallelic=skipped,
        skipped_examples=skipped_examples,
        split_multiallelic=split,
        split_examples=split_examples,
        other_alleles=other,
        other_examples=other_examples,
        unphased=np.stack(loose) if allow_unphased else None,
        haploid=np.stack(single) if keep_ploidy else None,
    )


def checked_records(records: Iterator[Variant], path: str) -> Iterator[Variant]:
    """`records`, with an htslib read error mid-file turned into one UserError line that names the last record
    read (a damaged or truncated file is caught before, by `open_vcf`)."""
    last = "the header"
    while True:
        try:
            rec = next(records)
        except StopIteration:
            return
        except Exception:  # noqa: BLE001 - htslib read error mid-file: truncated or corrupt
            raise UserError(path, f"the record after {last} cannot be read (a malformed line: missing columns, "
                            "or a GT not like 0|1?)", "fix or drop it, and check the file with `bcftools view`") from None
        last = f"{rec.CHROM}:{rec.POS}"
        yield rec


def biallelic_sites(rec: Variant, path: str) -> list[tuple[str, np.ndarray]]:
    """The one rule, for every reader, of which sites a record holds: (ALT, genotype array) for each ALT allele
    that is an allele (a base, a symbolic one such as <DEL>, or '*'). A biallelic record is one site; a
    multiallelic one is split as `bcftools norm -m -` splits it: site i calls ALT i 1 and every other allele 0
    (missing stays missing). cyvcf2's genotype arrays: [samples, ploidy + 1], last column the phased flag."""
    gt = genotypes(rec, path)
    alts = [alt for alt in rec.ALT if alt not in ("", ".")]
    if len(rec.ALT) == 1:
        return [(alts[0], gt)] if alts else []
    sites, calls = [], gt[:, :-1]
    for number, alt in enumerate(rec.ALT, start=1):
        if alt in ("", "."):
            continue
        recoded = np.where(calls == number, 1, np.where(calls >= 0, 0, calls))
        sites.append((alt, np.concatenate([recoded, gt[:, -1:]], axis=1).astype(gt.dtype)))
    return sites


def biallelic_marker(rec: Variant) -> bool:
    """Whether a record is one biallelic site as it stands: exactly one ALT allele that is an allele (a base,
    a symbolic one such as <DEL>, or '*'). `ragprep split` (a biallelic panel maker) keeps only these; the
    panel, target and truth readers take `biallelic_sites`, which also splits multiallelic records."""
    return len(rec.ALT) == 1 and rec.ALT[0] not in ("", ".")


_COMPLEMENT = str.maketrans("ACGT", "TGCA")


@dataclass
class AlleleMatch:
    """How records at panel positions carry the panel's two alleles (bool arrays, one value a record): the same
    REF/ALT, swapped (REF/ALT = panel ALT/REF), on the other strand (either way round), or ambiguous (an A/T or
    C/G SNP reversed, where a swap and a strand flip look the same: dropped, as imputation servers drop them)."""

    same: np.ndarray
    swapped: np.ndarray
    flipped: np.ndarray
    flipped_swapped: np.ndarray
    ambiguous: np.ndarray

    @property
    def keep(self) -> np.ndarray:
        return self.same | self.swapped | self.flipped | self.flipped_swapped

    @property
    def recode(self) -> np.ndarray:
        """The records whose allele 0 is the panel's ALT."""
        return self.swapped | self.flipped_swapped


def match_alleles(panel_ref: np.ndarray, panel_alt: np.ndarray, ref: np.ndarray, alt: np.ndarray) -> AlleleMatch:
    """The one site matcher (targets, split's sites file): records' REF/ALT against the panel's at the same
    positions, case-insensitive."""
    p_ref, p_alt, ref, alt = (np.char.upper(np.asarray(a).astype(object).astype(str)) for a in (panel_ref, panel_alt, ref, alt))
    c_ref, c_alt = _complement(ref), _complement(alt)
    same = (ref == p_ref) & (alt == p_alt)
    reversed_ = (ref == p_alt) & (alt == p_ref)
    ambiguous = reversed_ & (_complement(p_alt) == p_ref)  # A/T, T/A, C/G, G/C
    other = ~same & ~reversed_
    return AlleleMatch(same, reversed_ & ~ambiguous, other & (c_ref == p_ref) & (c_alt == p_alt),
                       other & (c_ref == p_alt) & (c_alt == p_ref), ambiguous)


def _complement(alleles: np.ndarray) -> np.ndarray:
    """Complement of single-base A/C/G/T alleles; '' for anything else (never equal to a panel allele)."""
    is_base = np.isin(alleles, ["A", "C", "G", "T"])
    return np.where(is_base, np.char.translate(alleles, _COMPLEMENT), "")


def genotypes(rec: Variant, path: str) -> np.ndarray:
    """cyvcf2's genotype array [samples, ploidy + 1] (last column: phased flag) of a record, or a UserError
    naming the record when it has no GT that htslib could read."""
    try:
        return rec.genotype.array()
    except Exception:  # noqa: BLE001 - cyvcf2 raises a plain Exception
        raise UserError(path, "no readable FORMAT/GT in this record", "give every record genotypes (GT) for "
                        "every sample, e.g. 0|1", place=f"{rec.CHROM}:{rec.POS}") from None


def _has_lengths(vcf: VCF) -> bool:
    try:
        return bool(vcf.seqlens)
    except Exception:  # noqa: BLE001 - no ##contig lengths in the header
        return False


def _records(vcf: VCF, path: str, region: str | None, wanted: tuple[str, int, int] | None) -> Iterator:
    """Iterate records, through the index when a region is asked for and one exists, else by a full scan."""
    if wanted is None or not any(Path(f"{path}.{ext}").exists() for ext in ("tbi", "csi")):
        return iter(vcf)  # without an index file, scan (querying would make htslib print an error line)
    query = vcf(region)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cyvcf2 warns when the index has no records there
            first = next(query)  # cyvcf2 reads the index lazily: a missing one fails here
    except StopIteration:
        return iter(())
    except Exception:  # noqa: BLE001 - no index (or a broken one): scan the whole file and filter
        return iter(vcf)
    return itertools.chain([first], query)


def _haplotype_row(gt: np.ndarray, samples: np.ndarray, path: str, where: str, allow_missing: bool,
                   allow_unphased: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cyvcf2 genotype array [N, ploidy + 1] (last column: phased flag) -> int8 [2N] haplotype alleles, bool [N]
    unphased heterozygous calls (an unphased homozygote is as good as phased) and bool [N] haploid calls (both
    haplotypes carry the allele)."""
    calls = gt[:, :-1]
    ploidy = (calls != -2).sum(axis=1)  # -2 pads calls of a lower ploidy than the record's widest
    blank = (ploidy == 1) & (calls[:, 0] == MISSING)  # GT ".": a missing call of unwritten ploidy
    haploid = (ploidy == 1) & ~blank
    wrong = ploidy > 2
    if wrong.any():
        bad = int(np.argmax(wrong))
        raise UserError(
            path, f"sample {samples[bad]} has ploidy {ploidy[bad]}; ragsnv reads haploid and diploid calls",
            "keep haploid and diploid samples and contigs only (e.g. `bcftools view -s`)", where,
        )
    alleles = np.full((calls.shape[0], 2), MISSING, dtype=np.int8)
    diploid = ploidy == 2
    alleles[diploid] = calls[diploid, :2]
    alleles[haploid] = calls[haploid, :1]
    missing = (alleles == MISSING).any(axis=1)
    if missing.any() and not allow_missing:
        bad = int(np.argmax(missing))
        raise UserError(
            path, f"sample {samples[bad]} has a missing allele",
            "impute and phase the panel first (e.g. Beagle 5), or drop the record", where,
        )
    # cyvcf2 flags a missing './.' unphased: missing is checked first
    unphased = (gt[:, -1] == 0) & ~missing & (alleles[:, 0] != alleles[:, 1])
    if unphased.any() and not allow_unphased:
        bad = int(np.argmax(unphased))
        raise UserError(
            path, f"sample {samples[bad]} is unphased",
            "phase the file first (e.g. Beagle 5 or SHAPEIT5)", where,
        )
    return alleles.reshape(-1), unphased, haploid
