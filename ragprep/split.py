"""`ragprep split`: a real panel split like `ragprep simulate --holdout`, from phased VCFs of one region.

The samples of every input are merged on the biallelic sites they share (same contig, position, REF and ALT);
samples with an unphased heterozygous call, a missing allele or a ploidy other than 2 at those sites are dropped.
`holdout` samples chosen by `seed` are held out: OUT is the panel (the other samples, every site),
OUT.truth.vcf.gz the held-out samples at every site, OUT.target.vcf.gz the held-out samples at the sites of a
sites VCF (an array, e.g. an OMNI scaffold) matched by contig, position, REF and ALT.
Everything is read into memory: meant for region-sized files (a few Mb, a few thousand samples).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pysam

from ragprep.progress import record_spinner
from ragprep.vcf import biallelic_marker, checked_records, genotypes, match_alleles, open_vcf
from stores.atomic import atomic_path
from stores.errors import UserError

Key = tuple[str, int, str, str]  # contig, pos, REF, ALT

# why a sample is dropped; a sample with several problems is counted under the first
REASONS = ("ploidy", "missing", "unphased")


@dataclass
class _Calls:
    """One input file: its biallelic records and their haplotype alleles."""

    path: str
    samples: list[str]
    keys: list[Key]
    ids: list[str]
    alleles: np.ndarray  # int8 [V, N, 2]: 0 REF, 1 ALT, -1 missing
    bad: np.ndarray  # int8 [V, N]: 0 fine, else 1 + index into REASONS
    skipped_multiallelic: int
    contig_lengths: dict[str, int]


@dataclass
class SplitReport:
    paths: dict[str, Path]
    input_samples: list[int]  # samples in each input
    input_sites: list[int]  # biallelic records in each input
    shared_sites: int  # biallelic sites in every input
    duplicate_records: int  # shared records dropped at positions with more than one record
    duplicate_positions: int  # ... at so many positions
    sites: int  # sites written to the panel and the truth
    dropped: dict[str, list[str]]  # reason -> sample ids
    panel_samples: int
    held_out: list[str]
    sites_file_records: int
    target_sites: int
    sites_other_alleles: int  # sites-file records at a panel position with other alleles (or A/T, C/G reversed)
    sites_swapped: int  # sites-file records of a panel site with its alleles swapped or strand-flipped: kept
    sites_absent: int  # sites-file records at no panel position
    skipped_multiallelic: list[int] = field(default_factory=list)

    def summary(self) -> str:
        inputs = " + ".join(f"{s} samples/{v} sites" for s, v in zip(self.input_samples, self.input_sites))
        text = f"merged {inputs} on {self.shared_sites} shared biallelic sites"
        if any(v != self.shared_sites for v in self.input_sites):
            share = ", ".join(f"{self.shared_sites / max(v, 1):.1%}" for v in self.input_sites)
            text += f" (the intersection: {share} of each input's sites)"
        if any(self.skipped_multiallelic):
            text += f" (skipped {'/'.join(map(str, self.skipped_multiallelic))} multiallelic records)"
        if self.duplicate_records:
            text += (f"; dropped {_count(self.duplicate_records, 'record')} at "
                     f"{_count(self.duplicate_positions, 'position')} with more than one record")
        for reason, ids in self.dropped.items():
            if ids:
                shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
                text += f"; dropped {_count(len(ids), 'sample')} with {_REASON_TEXT[reason]} ({shown})"
        text += (f"; panel {self.panel_samples} samples x {self.sites} sites, held out {len(self.held_out)}; "
                 f"target {self.target_sites} of the sites file's {self.sites_file_records} records")
        if self.sites_swapped:
            text += f" ({self.sites_swapped} of them with the panel's alleles swapped or on the other strand)"
        if self.sites_other_alleles or self.sites_absent:
            text += (f"; not typed: {self.sites_other_alleles} at a panel position with other alleles, "
                     f"{self.sites_absent} at no panel position")
        return text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


_REASON_TEXT = {"unphased": "unphased heterozygous calls", "missing": "missing alleles",
                "ploidy": "non-diploid calls"}


def split_panel(vcfs: list[str | Path], out: str | Path, holdout: int, sites: str | Path, seed: int = 1) -> SplitReport:
    """Merge phased VCFs on their shared biallelic sites, hold out `holdout` samples chosen by `seed`, and write
    OUT (panel), OUT.truth.vcf.gz and OUT.target.vcf.gz (held-out samples at the sites of `sites`)."""
    if not vcfs:
        raise UserError("VCF", "no input VCF given", "give one or more phased VCFs of the same region")
    inputs = [_read_calls(str(path)) for path in vcfs]
    _check_unique_samples(inputs)

    # the sites every input has, in the first input's order; a position with two shared records is dropped
    shared = set(inputs[0].keys).intersection(*(calls.keys for calls in inputs[1:]))
    first = inputs[0]
    order = [i for i, key in enumerate(first.keys) if key in shared]
    per_position = Counter(first.keys[i][:2] for i in order)
    kept = [i for i in order if per_position[first.keys[i][:2]] == 1]
    if not kept:
        names = ", ".join(calls.path for calls in inputs)
        raise UserError(first.path, f"no biallelic site (contig, position, REF, ALT) is in every input ({names})",
                         "give VCFs of the same region, with the same contig names and allele normalization")
    keys = [first.keys[i] for i in kept]
    ids = [first.ids[i] for i in kept]

    alleles, bad, samples = [], [], []
    for calls in inputs:
        index = {key: i for i, key in enumerate(calls.keys)}
        rows = np.fromiter((index[key] for key in keys), dtype=np.int64, count=len(keys))
        alleles.append(calls.alleles[rows])
        bad.append(calls.bad[rows])
        samples.extend(calls.samples)
    merged = np.concatenate(alleles, axis=1)  # [V, N, 2]
    flags = np.concatenate(bad, axis=1)  # [V, N]
    first_reason = np.where(flags > 0, flags, len(REASONS) + 1).min(axis=0, initial=len(REASONS) + 1)
    first_reason[first_reason > len(REASONS)] = 0  # 0: every call of the sample is fine
    dropped = {reason: [samples[j] for j in np.flatnonzero(first_reason == code + 1)]
               for code, reason in enumerate(REASONS)}
    good = np.flatnonzero(first_reason == 0)
    if holdout < 1 or holdout >= good.size:
        raise UserError(
            "--holdout", f"cannot hold out {holdout} of {good.size} usable samples "
            f"({len(samples) - good.size} of {len(samples)} dropped)",
            f"give 1 <= --holdout < {good.size}",
        )
    held = np.sort(good[np.random.default_rng([seed, 0x401D]).choice(good.size, holdout, replace=False)])
    panel = np.setdiff1d(good, held)

    target_rows, sites_counts = _match_sites(str(sites), keys)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.name.removesuffix(".gz").removesuffix(".vcf")
    lengths = {name: length for calls in inputs for name, length in calls.contig_lengths.items()}
    sources = " ".join(str(p) for p in vcfs)
    header = _header(keys, lengths, f"ragprep split {sources} --holdout {holdout} --sites {sites} --seed {seed}")
    every = np.arange(len(keys))
    paths = {
        "panel": _write(out, header, keys, ids, merged, every, panel, samples),
        "truth": _write(out.with_name(f"{stem}.truth.vcf.gz"), header, keys, ids, merged, every, held, samples),
        "target": _write(out.with_name(f"{stem}.target.vcf.gz"), header, keys, ids, merged, target_rows, held,
                         samples),
    }
    return SplitReport(
        paths=paths, input_samples=[len(c.samples) for c in inputs], input_sites=[len(c.keys) for c in inputs],
        shared_sites=len(order), duplicate_records=len(order) - len(kept),
        duplicate_positions=sum(n > 1 for n in per_position.values()), sites=len(keys), dropped=dropped,
        panel_samples=int(panel.size), held_out=[samples[j] for j in held], target_sites=int(target_rows.size),
        skipped_multiallelic=[c.skipped_multiallelic for c in inputs], **sites_counts,
    )


def _read_calls(path: str) -> _Calls:
    """Every biallelic record of a VCF with its calls; per call whether it is unusable for a panel and why."""
    vcf = open_vcf(path)
    samples = list(vcf.samples)
    if not samples:
        raise UserError(path, "the VCF has no samples", "give VCFs with phased FORMAT/GT sample columns")
    keys: list[Key] = []
    ids: list[str] = []
    rows: list[np.ndarray] = []
    flags: list[np.ndarray] = []
    skipped = 0
    with record_spinner(f"reading {path}") as tick:
        for rec in checked_records(iter(vcf), path):
            tick()
            if not biallelic_marker(rec):
                skipped += len(rec.ALT) > 1
                continue
            gt = genotypes(rec, path)
            calls = gt[:, :-1]
            ploidy = (calls != -2).sum(axis=1)
            pair = np.full((len(samples), 2), -1, dtype=np.int8)
            width = min(calls.shape[1], 2)
            pair[:, :width] = np.where(calls[:, :width] >= 0, calls[:, :width], -1)
            blank = (ploidy == 1) & (calls[:, 0] == -1)  # GT ".": a missing call of unwritten ploidy
            missing = (pair < 0).any(axis=1)
            # an unphased homozygous call (0/0, 1/1) has one phase only: it is written back phased
            unphased = (gt[:, -1] == 0) & (pair[:, 0] != pair[:, 1])
            bad = np.zeros(len(samples), dtype=np.int8)
            for code, wrong in reversed(list(enumerate(((ploidy != 2) & ~blank, missing, unphased)))):
                bad[wrong] = code + 1  # the first reason in REASONS order wins
            keys.append((rec.CHROM, rec.POS, rec.REF, rec.ALT[0]))
            ids.append(rec.ID or ".")
            rows.append(pair)
            flags.append(bad)
    if not rows:
        raise UserError(path, "the VCF has no biallelic records", "check the file (`bcftools view -H -m2 -M2`)")
    lengths = {m.group(1): int(m.group(2))
               for m in re.finditer(r"##contig=<ID=([^,>]+)[^>]*?length=(\d+)", vcf.raw_header)}
    return _Calls(path, samples, keys, ids, np.stack(rows), np.stack(flags), skipped, lengths)


def _check_unique_samples(inputs: list[_Calls]) -> None:
    seen: dict[str, str] = {}
    for calls in inputs:
        for sample in calls.samples:
            if sample in seen:
                where = f"sample {sample}"
                problem = (f"sample also in {seen[sample]}" if seen[sample] != calls.path
                           else "sample given twice (twice in the header, or the file given twice)")
                raise UserError(calls.path, problem,
                                 f"give each sample once (e.g. `bcftools view -s ^{sample}` on one file)", where)
            seen[sample] = calls.path


def _match_sites(path: str, keys: list[Key]) -> tuple[np.ndarray, dict[str, int]]:
    """Rows of `keys` that the sites VCF has (same contig, position, REF, ALT), and counts of its other records."""
    index = {key: i for i, key in enumerate(keys)}
    by_position = {key[:2]: key for key in keys}
    rows: set[int] = set()
    counts = {"sites_file_records": 0, "sites_other_alleles": 0, "sites_swapped": 0, "sites_absent": 0}
    vcf = open_vcf(path)
    try:
        for rec in vcf:
            counts["sites_file_records"] += 1
            for alt in rec.ALT or ["."]:
                key = (rec.CHROM, rec.POS, rec.REF, alt)
                if key in index:
                    rows.add(index[key])
                    break
            else:
                other = by_position.get((rec.CHROM, rec.POS))
                if other is None:
                    counts["sites_absent"] += 1
                    continue
                alt = rec.ALT[0] if rec.ALT else "."
                if match_alleles([other[2]], [other[3]], [rec.REF], [alt]).keep[0]:  # swapped or other strand
                    rows.add(index[other])
                    counts["sites_swapped"] += 1
                else:
                    counts["sites_other_alleles"] += 1
    except Exception as err:  # noqa: BLE001 - htslib read error mid-file
        raise UserError(path, f"cannot read the sites VCF ({str(err).splitlines()[0][:120]})",
                         "re-create it (bcftools view -Oz) and check it with `bcftools view`") from None
    if not rows:
        contigs = sorted({key[0] for key in keys})
        raise UserError(path, f"none of its {counts['sites_file_records']} records is a panel site "
                         f"(panel contigs: {', '.join(contigs)})",
                         "give a sites VCF of the same region, contig names and alleles as the panel")
    return np.asarray(sorted(rows), dtype=np.int64), counts


def _header(keys: list[Key], lengths: dict[str, int], command: str) -> str:
    contigs = dict.fromkeys(key[0] for key in keys)
    lines = ["##fileformat=VCFv4.2", f"##source={command}"]
    lines += [f"##contig=<ID={c},length={lengths[c]}>" if c in lengths else f"##contig=<ID={c}>" for c in contigs]
    lines.append('##FORMAT=<ID=GT,Number=1,Type=String,Description="Phased genotype">')
    lines.append("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT")
    return "\n".join(lines)


_GT = np.array(["0|0", "0|1", "1|0", "1|1"], dtype=object)


def _write(out: Path, header: str, keys: list[Key], ids: list[str], alleles: np.ndarray, rows: np.ndarray,
           columns: np.ndarray, samples: list[str]) -> Path:
    """Write records `rows` of samples `columns` as a bgzipped, tabix-indexed VCF (phased GT only)."""
    names = "\t".join(samples[j] for j in columns)
    calls = alleles[np.ix_(rows, columns)].astype(np.int64)  # [R, C, 2], all 0/1 (bad samples are dropped)
    text = _GT[calls[..., 0] * 2 + calls[..., 1]]
    fd, plain = tempfile.mkstemp(suffix=".vcf", dir=out.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{header}\t{names}\n")
            for r, row in enumerate(rows):
                contig, pos, ref, alt = keys[row]
                handle.write(f"{contig}\t{pos}\t{ids[row]}\t{ref}\t{alt}\t.\t.\t.\tGT\t" + "\t".join(text[r]) + "\n")
        pysam.tabix_compress(plain, str(out), force=True)
        pysam.tabix_index(str(out), preset="vcf", force=True)
    finally:
        os.unlink(plain)
    return out


def unphase_vcf(path: str | Path, out: str | Path, seed: int = 1) -> tuple[int, int]:
    """Write `path` with every genotype unphased and each heterozygote's alleles in a random order (seeded), as
    an array lab hands genotypes over: bgzipped and tabix-indexed. Returns (records, heterozygous calls)."""
    from cyvcf2 import Writer

    out = Path(out)
    if not str(out).endswith(".vcf.gz"):
        raise UserError(out, "--out must end in .vcf.gz (a bgzipped VCF)", "name it e.g. target.unphased.vcf.gz")
    vcf = open_vcf(str(path))
    rng = np.random.default_rng(seed)
    records = hets = 0
    # the index renamed into place first, then the VCF: a VCF is never there without its index
    with atomic_path(out) as staging, atomic_path(f"{out}.tbi", out) as staging_index:
        writer = Writer(str(staging), vcf, mode="wz")
        for rec in checked_records(iter(vcf), str(path)):
            gt = genotypes(rec, str(path))
            calls = gt[:, :-1].copy()
            het = np.zeros(calls.shape[0], dtype=bool)
            if calls.shape[1] == 2:
                het = (calls[:, 0] != calls[:, 1]) & (calls >= 0).all(axis=1)
            swap = het & (rng.random(calls.shape[0]) < 0.5)
            calls[swap] = calls[swap][:, ::-1]
            rec.genotypes = [[*(int(a) for a in row if a != -2), False] for row in calls]
            writer.write_record(rec)
            records += 1
            hets += int(het.sum())
        writer.close()
        pysam.tabix_index(str(staging), preset="vcf", force=True, index=str(staging_index))
    return records, hets
