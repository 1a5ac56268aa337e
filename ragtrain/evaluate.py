"""`ragtrain evaluate`: score imputed VCFs against true genotypes, per MAF bin.

Reads Beagle 5.x output (FORMAT GT:DS[:GP], INFO AF, DR2, IMP), Minimac4 output (FORMAT DS, INFO R2,
IMPUTED) and ragsnv's own: FORMAT DS is required, GP is used for the best guess when present, INFO DR2 (or
Minimac's R2) for the DR2 calibration. Sites match by (contig, position, REF, ALT), samples by id.
Writes report.csv, report.md and r2_by_maf.png into the output folder.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cyvcf2 import VCF

from ragprep.progress import console, record_spinner
from ragprep.vcf import biallelic_sites, checked_records, open_vcf
from ragtrain import metrics
from stores import EmbeddingStore, open_store
from stores.atomic import atomic_path
from stores.errors import UserError, check_writable
from stores.genome import contig_stores

SiteKey = tuple[str, int, str, str]  # contig, position, REF, ALT
IMPUTED_FLAGS = ("IMP", "IMPUTED")  # Beagle, Minimac4
ESTIMATED_R2 = ("DR2", "R2")  # Beagle, Minimac4
COLUMNS = ("file", "bin", "maf_low", "maf_high", "n_sites", "n_genotypes", "r2", "concordance",
           "nonref_concordance", "n_nonref", "mean_dr2")


@dataclass
class Truth:
    """True genotypes: ALT allele counts [sites, samples] (-1 missing) and ALT frequency per site."""

    path: str
    sample_ids: np.ndarray
    index: dict[SiteKey, int]
    counts: np.ndarray  # int8 [sites, samples]
    af: np.ndarray  # float64 [sites], NaN where no genotype is observed
    first: np.ndarray  # int8 [sites, samples]: the allele of the first haplotype of a phased call, else -1
    skipped_records: int = 0  # records without an ALT allele


@dataclass
class Imputed:
    """What one imputed VCF says about its kept sites."""

    path: str
    sample_ids: np.ndarray
    keys: list[SiteKey]
    dosage: np.ndarray  # float32 [sites, samples], NaN missing
    gp: np.ndarray | None  # float32 [sites, samples, 3]
    dr2: np.ndarray | None  # float64 [sites] (INFO DR2, or Minimac's R2)
    dr2_field: str | None
    imputed_flag: str | None  # INFO flag that marked kept sites, None when all sites were kept
    typed_keys: list[SiteKey] = field(default_factory=list)  # the sites left out as typed (not flagged)
    typed_first: np.ndarray | None = None  # int8 [typed sites, samples]: first haplotype's allele, -1 unphased
    n_records: int = 0
    skipped_typed: int = 0
    skipped_records: int = 0  # records without an ALT allele


def _header_ids(vcf: VCF) -> dict[str, set[str]]:
    """IDs declared per header section: {'INFO': {...}, 'FORMAT': {...}}."""
    ids: dict[str, set[str]] = {"INFO": set(), "FORMAT": set()}
    for line in vcf.header_iter():
        if line.type in ids:
            ids[line.type].add(line.info().get("ID"))
    return ids


def read_truth(path: str) -> Truth:
    """True genotypes of every site (phased or not; a multiallelic record split, one site an ALT): ALT allele
    count per sample, -1 if missing."""
    vcf = open_vcf(path)
    samples = np.asarray(vcf.samples, dtype=str)
    if samples.size == 0:
        raise UserError(path, "the truth VCF has no samples", "give a VCF with FORMAT/GT sample columns")
    if "GT" not in _header_ids(vcf)["FORMAT"]:
        raise UserError(path, "the truth VCF has no FORMAT/GT", "give true genotypes (GT) for the samples")
    index: dict[SiteKey, int] = {}
    rows: list[np.ndarray] = []
    firsts: list[np.ndarray] = []
    skipped = 0
    with record_spinner(f"reading truth {path}") as tick:
        for rec in checked_records(iter(vcf), path):
            sites = biallelic_sites(rec, path)  # a multiallelic record: one site an ALT, as the panel reads it
            skipped += not sites
            for alt, gt in sites:
                calls = gt[:, :-1]  # last column: phased flag; -2 pads lower ploidy
                count = (calls >= 1).sum(axis=1).astype(np.int8)
                count[(calls == -1).any(axis=1)] = -1
                index[(rec.CHROM, rec.POS, rec.REF, alt)] = len(rows)
                rows.append(count)
                firsts.append(first_allele(gt))
            tick()
    if not rows:
        raise UserError(path, "the truth VCF has no biallelic records", "check the file")
    counts = np.stack(rows)
    observed = counts >= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        af = np.where(observed, counts, 0).sum(axis=1) / (2.0 * observed.sum(axis=1))
    return Truth(str(path), samples, index, counts, af, np.stack(firsts), skipped)


def first_allele(gt: np.ndarray) -> np.ndarray:
    """int8 [samples]: from cyvcf2's genotype array, the first haplotype's allele (0 REF, 1 ALT or another ALT)
    of a phased diploid call without missing alleles, else -1."""
    calls = gt[:, :-1]
    if calls.shape[1] != 2:
        return np.full(calls.shape[0], -1, dtype=np.int8)
    usable = (gt[:, -1] == 1) & (calls >= 0).all(axis=1)
    return np.where(usable, np.minimum(calls[:, 0], 1), -1).astype(np.int8)


def switch_errors(imputed: Imputed, truth: Truth) -> tuple[int, int]:
    """(switch errors, consecutive heterozygote pairs) of the imputed file's phase at its typed sites against
    the truth's, over the samples in both: a switch is a change, between a sample's consecutive heterozygous
    sites (het in the truth, phased in both), of whether the first haplotypes carry the same allele."""
    if imputed.typed_first is None or not imputed.typed_keys:
        return 0, 0
    pairs = [(i, truth.index[key]) for i, key in enumerate(imputed.typed_keys) if key in truth.index]
    if not pairs:
        return 0, 0
    rows_i, rows_t = (np.asarray(side) for side in zip(*pairs))  # in the imputed file's (sorted) order
    common, cols_i, cols_t = np.intersect1d(imputed.sample_ids, truth.sample_ids, return_indices=True)
    mine = imputed.typed_first[np.ix_(rows_i, cols_i)]
    true = truth.first[np.ix_(rows_t, cols_t)]
    het = (truth.counts[np.ix_(rows_t, cols_t)] == 1) & (mine >= 0) & (true >= 0)
    errors = opportunities = 0
    for sample in range(common.size):
        same = mine[het[:, sample], sample] == true[het[:, sample], sample]
        errors += int((same[1:] != same[:-1]).sum())
        opportunities += max(same.size - 1, 0)
    return errors, opportunities


def _open_imputed(path: str) -> tuple[VCF, dict[str, set[str]]]:
    """Open an imputed VCF and check its header declares FORMAT/DS."""
    vcf = open_vcf(path)
    ids = _header_ids(vcf)
    if "DS" not in ids["FORMAT"]:
        raise UserError(
            path, "no FORMAT/DS (imputed ALT dosage) in the header",
            "give the imputed output with dosages (Beagle 5 writes DS by default; minimac4: --format GT,DS)",
        )
    return vcf, ids


def read_imputed(path: str, all_sites: bool = False) -> Imputed:
    """Dosages (and GP, DR2 where present) of an imputed VCF.

    Keeps only the imputed sites (INFO IMP, or Minimac4's IMPUTED) when the header declares such a flag,
    unless `all_sites`; otherwise every biallelic site.
    """
    vcf, ids = _open_imputed(path)
    samples = np.asarray(vcf.samples, dtype=str)
    if samples.size == 0:
        raise UserError(path, "the imputed VCF has no samples", "give the imputed output VCF")
    has_gp = "GP" in ids["FORMAT"]
    dr2_field = next((f for f in ESTIMATED_R2 if f in ids["INFO"]), None)
    flag = None if all_sites else next((f for f in IMPUTED_FLAGS if f in ids["INFO"]), None)
    out = Imputed(str(path), samples, [], np.empty(0), None, None, dr2_field, flag)
    dosages: list[np.ndarray] = []
    typed_first: list[np.ndarray] = []
    gps: list[np.ndarray] = []
    dr2s: list[float] = []
    with record_spinner(f"reading {path}") as tick:
        for rec in checked_records(iter(vcf), path):
            out.n_records += 1
            # a multiallelic record: one site an ALT (DS, DR2 are Number=A), as the truth and panel are read
            alts = [(number, alt) for number, alt in enumerate(rec.ALT) if alt not in ("", ".")]
            if not alts:
                out.skipped_records += 1
                continue
            if flag is not None and not rec.INFO.get(flag):
                out.skipped_typed += 1
                for alt, gt in biallelic_sites(rec, path):  # genotypes read only here, for the phase
                    out.typed_keys.append((rec.CHROM, rec.POS, rec.REF, alt))
                    typed_first.append(first_allele(gt))
                continue
            where = f"{rec.CHROM}:{rec.POS}"
            ds = rec.format("DS")
            if ds is None or ds.shape[1] < len(rec.ALT):
                raise UserError(path, "record without FORMAT/DS for each ALT allele", "write DS on every record",
                                where)
            gp = rec.format("GP") if has_gp else None
            value = rec.INFO.get(dr2_field) if dr2_field is not None else None
            values = value if isinstance(value, tuple) else (value,) * len(rec.ALT)
            for number, alt in alts:
                dosages.append(ds[:, number].astype(np.float32))
                if has_gp:  # per genotype: only a biallelic record's three are one site's
                    gps.append(gp.astype(np.float32) if gp is not None and gp.shape[1] == 3 and len(rec.ALT) == 1
                               else np.full((samples.size, 3), np.nan, np.float32))
                if dr2_field is not None:
                    dr2 = values[number] if number < len(values) else None
                    dr2s.append(float(dr2) if isinstance(dr2, (int, float)) else math.nan)
                out.keys.append((rec.CHROM, rec.POS, rec.REF, alt))
            tick()
    if not dosages:
        what = f"sites flagged INFO/{flag}" if flag else "biallelic records"
        raise UserError(path, f"no {what} to evaluate",
                         "pass --all-sites to score typed sites too" if flag else "check the file")
    out.dosage = np.stack(dosages)
    out.typed_first = np.stack(typed_first) if typed_first else None
    out.gp = np.stack(gps) if has_gp else None
    out.dr2 = np.asarray(dr2s, dtype=np.float64) if dr2_field is not None else None
    return out


def store_af(store: str | EmbeddingStore, truth: Truth) -> np.ndarray:
    """ALT frequency of each truth site from the store's variant_af (every contig's, for a genome folder),
    matched by contig, position, REF and ALT (NaN: not in it)."""
    genome = contig_stores(store) if isinstance(store, str) else {}
    stores = [open_store(url, require_complete=False) for url in genome.values()] if genome else [
        open_store(store, require_complete=False) if isinstance(store, str) else store]
    af_by_site = {}
    for opened in stores:
        alleles = opened.alleles_ref_alt
        af_by_site.update({(opened.contig, int(pos), str(ref), str(alt)): float(af)
                           for pos, (ref, alt), af in zip(opened.positions, alleles[:, :2], opened.af)})
    af = np.full(truth.counts.shape[0], np.nan)
    for key, row in truth.index.items():
        af[row] = af_by_site.get(key, np.nan)
    return af


def _match(imputed: Imputed, truth: Truth) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(imputed rows, truth rows, imputed columns, truth columns) of the shared sites and samples."""
    truth_rows = np.array([truth.index.get(key, -1) for key in imputed.keys], dtype=np.int64)
    rows = np.nonzero(truth_rows >= 0)[0]
    if rows.size == 0:
        raise UserError(
            imputed.path, f"no site in common with the truth {truth.path} (matched by contig, position, REF, ALT)",
            "check both use the same reference build, contig names (chr22 vs 22) and allele order",
        )
    truth_col = {sample: j for j, sample in enumerate(truth.sample_ids)}
    pairs = [(i, truth_col[s]) for i, s in enumerate(imputed.sample_ids) if s in truth_col]
    if not pairs:
        raise UserError(
            imputed.path, f"no sample id in common with the truth {truth.path}",
            "impute the same samples whose true genotypes the truth VCF holds (check the sample names)",
        )
    cols, truth_cols = (np.array(c, dtype=np.int64) for c in zip(*pairs))
    return rows, truth_rows[rows], cols, truth_cols


def _mean_by_bin(values: np.ndarray, bins: np.ndarray) -> np.ndarray:
    has = (bins >= 0) & np.isfinite(values)
    n_bins = len(metrics.MAF_BINS)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.bincount(bins[has], values[has], n_bins) / np.bincount(bins[has], minlength=n_bins)


def _fmt(value: float, digits: int = 4) -> str:
    return "NA" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _labels(paths: list[str]) -> list[str]:
    """File names, or the paths as given where two inputs share a name."""
    names = [Path(p).name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def evaluate(imputed_paths: list[str], truth_path: str, out_dir: str, store: str | None = None,
             all_sites: bool = False) -> list[dict]:
    """Score each imputed VCF against the truth per MAF bin; write report.csv, report.md, r2_by_maf.png.

    Returns the rows of report.csv: one per input file and MAF bin (see COLUMNS). MAF comes from the
    store's variant_af when `store` is given, else from all truth genotypes. Only imputed sites (INFO IMP)
    count unless `all_sites`.
    """
    if not imputed_paths:
        raise UserError("IMPUTED", "no imputed VCF given", "pass one or more imputed VCFs")
    out = _report_folder(out_dir)
    for path in imputed_paths:  # fail fast, before reading a large truth
        _open_imputed(str(path))
    if store and not contig_stores(store):
        open_store(store, require_complete=False)  # fail fast, before reading a large truth
    truth = read_truth(truth_path)
    af_all = store_af(store, truth) if store else truth.af
    maf_source = f"store {store} (variant_af)" if store else f"truth genotypes ({truth_path})"
    rows: list[dict] = []
    sections: list[str] = []
    for path, label in zip(imputed_paths, _labels([str(p) for p in imputed_paths])):
        imputed = read_imputed(str(path), all_sites)
        rows_i, rows_t, cols_i, cols_t = _match(imputed, truth)
        dosage = imputed.dosage[np.ix_(rows_i, cols_i)]
        true = truth.counts[np.ix_(rows_t, cols_t)].astype(np.float32)
        true[true < 0] = np.nan
        gp = None if imputed.gp is None else imputed.gp[np.ix_(rows_i, cols_i)]
        dr2 = None if imputed.dr2 is None else imputed.dr2[rows_i]
        af = af_all[rows_t]
        table = metrics.summarise(dosage, true, metrics.maf_from_af(af), gp=gp, dr2=dr2, af=af)
        rows += [{"file": label, **row} for row in table]
        counts = {
            "records": imputed.n_records, "kept": len(imputed.keys), "typed_skipped": imputed.skipped_typed,
            "matched": int(rows_i.size), "samples": int(cols_i.size), "imputed_samples": imputed.sample_ids.size,
            "truth_samples": truth.sample_ids.size, "no_maf": int(np.isnan(af).sum()),
        }
        counts["switch_errors"], counts["het_pairs"] = switch_errors(imputed, truth)
        console.print(
            f"{label}: {counts['matched']} of {counts['kept']} sites found in the truth, "
            f"{counts['samples']} samples in common"
            + (f", {counts['no_maf']} sites without a MAF (not in the store) left out" if counts["no_maf"] else "")
            + (f"; phase at the typed sites: switch error {_switch_text(counts)}" if counts["het_pairs"] else "")
        )
        site_r2 = _mean_by_bin(metrics.site_r2(dosage, true), metrics.assign_bins(metrics.maf_from_af(af)))
        sections.append(_markdown_section(label, imputed, table, counts, site_r2))
    with atomic_path(out / "report.csv") as path:
        _write_csv(path, rows)
    with atomic_path(out / "report.md") as path:
        _write_markdown(path, sections, truth_path, maf_source, all_sites)
    with atomic_path(out / "r2_by_maf.png") as path:
        _plot(path, rows)
    return rows


def _report_folder(out_dir: str) -> Path:
    """The report folder, created and checked writable before any VCF is read."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(out, "exists and is a file; --out is the report folder", "give a folder path (new or existing)")
    out.mkdir(parents=True, exist_ok=True)
    check_writable(out, "choose an --out folder that is writable and has free space")
    return out


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _markdown_section(label: str, imputed: Imputed, table: list[dict], counts: dict, site_r2: np.ndarray) -> str:
    kept = f"sites flagged INFO/{imputed.imputed_flag}" if imputed.imputed_flag else "all biallelic sites"
    lines = [
        f"## {label}", "",
        f"{counts['records']} records; scored {kept}: {counts['kept']} "
        f"(typed sites left out: {counts['typed_skipped']}), {counts['matched']} found in the truth; "
        f"{counts['samples']} samples in common ({counts['imputed_samples']} imputed, "
        f"{counts['truth_samples']} in the truth)."
        + (f" {counts['no_maf']} sites have no MAF (not in the store) and are left out." if counts["no_maf"] else ""),
        "",
    ]
    if counts["het_pairs"]:
        lines += [(f"Phase at the typed sites: switch error {_switch_text(counts)} (consecutive heterozygotes of "
                   "the truth whose relative phase differs)."), ""]
    lines += [
        "| MAF bin | sites | genotypes | dosage r2 | concordance | non-ref concordance | mean DR2 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in table:
        lines.append(f"| {row['bin']} | {row['n_sites']} | {row['n_genotypes']} | {_fmt(row['r2'])} | "
                     f"{_fmt(row['concordance'])} | {_fmt(row['nonref_concordance'])} | {_fmt(row['mean_dr2'])} |")
    lines += ["", "### DR2 calibration", ""]
    if imputed.dr2_field is None:
        lines.append("No INFO DR2 (or R2) in this file.")
    else:
        lines += [
            (f"Mean INFO/{imputed.dr2_field} (the imputer's estimate of r2) against the true r2: aggregate "
             "(pooled) and the mean of per-site r2 (over sites where truth and dosage vary)."), "",
            (f"| MAF bin | mean {imputed.dr2_field} | aggregate r2 | mean per-site r2 | "
             f"mean {imputed.dr2_field} - aggregate r2 |"),
            "|---|---:|---:|---:|---:|",
        ]
        for row, per_site in zip(table, site_r2):
            gap = row["mean_dr2"] - row["r2"]
            lines.append(f"| {row['bin']} | {_fmt(row['mean_dr2'])} | {_fmt(row['r2'])} | {_fmt(float(per_site))} | "
                         f"{_fmt(gap)} |")
    return "\n".join(lines) + "\n"


def _switch_text(counts: dict) -> str:
    return (f"{counts['switch_errors'] / counts['het_pairs']:.4f} ({counts['switch_errors']} of "
            f"{counts['het_pairs']} heterozygote pairs)")


def _write_markdown(path: Path, sections: list[str], truth_path: str, maf_source: str, all_sites: bool) -> None:
    which = "all sites (typed and imputed)" if all_sites else "imputed (masked) sites only, where files flag them"
    head = [
        "# Imputation accuracy", "",
        f"Truth: {truth_path}. MAF from {maf_source}. Scored: {which}.", "",
        ("Dosage r2: squared Pearson correlation of imputed dosage (FORMAT/DS) with the true ALT allele count, "
         "pooled over all (site, sample) pairs of a MAF bin. Concordance: best-guess genotype (argmax GP, else "
         "rounded DS) equals the truth. Non-reference concordance: the same among genotypes where the truth or "
         "the best guess is not homozygous REF. Missing true genotypes are left out."), "",
    ]
    path.write_text("\n".join(head) + "\n" + "\n".join(sections))


def _plot(path: Path, rows: list[dict]) -> None:
    """r2 per MAF bin, one line per input file (matplotlib's Agg canvas, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(metrics.MAF_BINS))
    for label in dict.fromkeys(row["file"] for row in rows):
        r2 = [row["r2"] for row in rows if row["file"] == label]
        ax.plot(x, r2, marker="o", label=label)
    ax.set_xticks(x, metrics.BIN_LABELS)
    ax.set_xlabel("MAF bin")
    ax.set_ylabel("aggregate dosage r2")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
