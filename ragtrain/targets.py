"""Read a target VCF (e.g. a SNP array; phased, unphased or partly phased) and place its calls on the panel's
sites. Unphased heterozygous calls are marked (`Targets.unphased`); `phase_targets` phases them.

Target sites are matched to the store's panel by contig, position, REF and ALT:

- matched: same REF/ALT;
- swapped: target REF/ALT = panel ALT/REF; kept, alleles recoded 0 <-> 1;
- flipped: the complementary strand (A/C vs T/G, also with REF/ALT swapped); kept, recoded to the panel's alleles;
- ambiguous_dropped: A/T or C/G panel SNP with the target's alleles reversed (a swap and a strand flip look the
  same, so the allele coding cannot be told): dropped. An A/T or C/G site with the same REF/ALT counts as matched
  (the usual assumption that both files are on the forward strand);
- not_in_panel: no panel site with that position and those alleles (other alleles, or another position): dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ragprep.vcf import (
    MISSING,
    AlleleMatch,
    match_alleles,
    open_vcf,
    parse_region,
    read_panel,
    record_contigs,
)
from stores.errors import UserError
from stores.reader import EmbeddingStore

_NO_RECORDS = "the target has no biallelic records"  # start of read_panel's problem text for an empty read


@dataclass
class Targets:
    """Target haplotypes on the panel's sites, in the panel's site order and REF/ALT coding.

    Haplotype h is allele (h % 2) of sample (h // 2). `alleles` is -1 at panel sites the target does not type
    and at missing calls. `missing_calls` counts genotypes (sample x kept site) with a missing allele.
    """

    path: str
    contig: str
    sample_ids: np.ndarray  # str [N]
    alleles: np.ndarray  # int8 [panel sites, 2N]: 0 REF, 1 ALT, -1 untyped or missing
    typed: np.ndarray  # bool [panel sites]: the target has the site
    matched: int = 0
    swapped: int = 0
    flipped: int = 0
    ambiguous_dropped: int = 0
    not_in_panel: int = 0
    missing_calls: int = 0
    split_multiallelic: int = 0
    contig_length: int | None = None  # from the target's ##contig header line, when it has one
    unphased: np.ndarray | None = None  # bool [typed sites, N]: heterozygous calls without phase, typed sites in order
    haploid: np.ndarray | None = None  # bool [typed sites, N]: haploid calls (both haplotypes carry the allele)

    def ploidy_one(self) -> np.ndarray | None:
        """bool [panel sites, N]: where each sample is written haploid, the ploidy of its nearest typed site
        (chrX: a male outside the PARs, whose boundaries the typed sites place); None if no call is haploid."""
        if self.haploid is None or not self.haploid.any():
            return None
        rows = np.flatnonzero(self.typed)
        sites = np.arange(self.typed.size)
        right = np.minimum(np.searchsorted(rows, sites), rows.size - 1)
        left = np.maximum(right - 1, 0)
        nearest = np.where(np.abs(rows[left] - sites) <= np.abs(rows[right] - sites), left, right)
        return self.haploid[nearest]

    @property
    def unphased_samples(self) -> int:
        return 0 if self.unphased is None else int(self.unphased.any(axis=0).sum())

    @property
    def n_samples(self) -> int:
        return int(self.sample_ids.shape[0])

    @property
    def n_typed(self) -> int:
        return int(self.typed.sum())

    def summary(self) -> str:
        n_sites = self.typed.size
        text = (
            f"{self.path}: {self.n_samples} samples; {self.n_typed} target sites on the panel "
            f"({self.matched} matched, {self.swapped} REF/ALT-swapped, {self.flipped} strand-flipped), "
            f"dropped {self.ambiguous_dropped} strand-ambiguous and {self.not_in_panel} not in the panel; "
            f"{self.missing_calls} missing calls; typed {self.n_typed} of {n_sites} panel sites "
            f"({100 * self.n_typed / max(n_sites, 1):.1f}%)"
        )
        if self.split_multiallelic:
            text += f"; split {self.split_multiallelic} multiallelic records into biallelic sites"
        if self.haploid is not None and self.haploid.any():
            text += f"; {int(self.haploid.any(axis=0).sum())} samples with haploid calls"
        if self.unphased_samples:
            text += (f"; {self.unphased_samples} samples with unphased heterozygous calls "
                     f"({int(self.unphased.sum())} calls)")
        return text


def load_targets(path: str, store: EmbeddingStore, region: str | None = None) -> Targets:
    """Read target genotypes (diploid or haploid, phased or not) from `path`; match them to `store`'s panel sites.

    `region` (CONTIG or CONTIG:START-END) must be on the store's contig; by default the whole contig is read,
    so a genome-wide target file works. Raises UserError (one line: file, problem, fix) for a contig the panel
    does not have, or no site in common with the panel.
    """
    contig = parse_region(region)[0] if region else store.contig
    if contig != store.contig:
        raise _contig_error(path, [contig], store.contig, what="--region is on contig")
    header_contigs = _header_contigs(path)
    if header_contigs and store.contig not in header_contigs:
        raise _contig_error(path, header_contigs, store.contig)
    try:
        target = read_panel(path, region or store.contig, allow_missing=True, what="target", allow_unphased=True,
                            keep_ploidy=True)
    except UserError as err:
        if err.problem.startswith(_NO_RECORDS) and not header_contigs:
            found = list(record_contigs(path))
            if found and store.contig not in found:
                raise _contig_error(path, found, store.contig) from None
        raise

    positions = np.asarray(store.positions)
    ref_alt = np.asarray(store.alleles_ref_alt)  # StringDType from zarr, or str
    at, match = _panel_sites(positions, ref_alt, target.positions, target.ref, target.alt)
    at_site = at >= 0
    at = np.maximum(at, 0)
    keep, recode, ambiguous = match.keep & at_site, match.recode & at_site, match.ambiguous & at_site
    if not keep.any():
        raise UserError(
            path, f"none of the target's {target.n_variants} sites on {target.contig} matches a panel site "
            f"(position, REF, ALT) of {store.url}",
            "check that target and panel use the same genome build and that the target is typed at panel sites",
        )

    calls = target.alleles[keep]
    flip_rows = recode[keep]
    calls[flip_rows] = np.where(calls[flip_rows] == MISSING, MISSING, 1 - calls[flip_rows])
    alleles = np.full((positions.size, target.n_haplotypes), MISSING, dtype=np.int8)
    alleles[at[keep]] = calls
    typed = np.zeros(positions.size, dtype=bool)
    typed[at[keep]] = True
    unphased = np.zeros((positions.size, target.n_samples), dtype=bool)
    unphased[at[keep]] = target.unphased[keep]
    haploid = np.zeros((positions.size, target.n_samples), dtype=bool)
    haploid[at[keep]] = target.haploid[keep]
    missing = calls.reshape(calls.shape[0], -1, 2) == MISSING
    return Targets(
        path=str(path),
        contig=target.contig,
        sample_ids=target.sample_ids,
        alleles=alleles,
        typed=typed,
        matched=int((match.same & at_site).sum()),
        swapped=int((match.swapped & at_site).sum()),
        flipped=int(((match.flipped | match.flipped_swapped) & at_site).sum()),
        ambiguous_dropped=int(ambiguous.sum()),
        not_in_panel=int((~keep & ~ambiguous).sum()),
        missing_calls=int(missing.any(axis=2).sum()),
        split_multiallelic=target.split_multiallelic,
        contig_length=target.contig_length,
        unphased=unphased[typed],
        haploid=haploid[typed],
    )


def _panel_sites(positions: np.ndarray, ref_alt: np.ndarray, target_positions: np.ndarray, ref: np.ndarray,
                 alt: np.ndarray) -> tuple[np.ndarray, AlleleMatch]:
    """For each target record, the panel site it types (-1: none at its position) and how its alleles match.
    Where a position holds several panel sites (a split multiallelic record), the one whose alleles match is
    taken: the same REF/ALT first, then swapped or strand-flipped."""
    first = np.searchsorted(positions, target_positions, side="left")
    many = np.searchsorted(positions, target_positions, side="right") - first  # panel sites at the position
    at = np.where(many > 0, first, -1)
    candidate = np.minimum(first, positions.size - 1)
    match = match_alleles(ref_alt[candidate, 0], ref_alt[candidate, 1], ref, alt)
    for offset in range(1, int(many.max(initial=0))):
        other = np.minimum(first + offset, positions.size - 1)
        found = match_alleles(ref_alt[other, 0], ref_alt[other, 1], ref, alt)
        better = (offset < many) & ((found.same & ~match.same) | (found.keep & ~match.keep))
        at = np.where(better, other, at)
        for name in ("same", "swapped", "flipped", "flipped_swapped", "ambiguous"):
            setattr(match, name, np.where(better, getattr(found, name), getattr(match, name)))
    return at, match


def _contig_error(path: str, found: list[str], panel_contig: str, what: str = "the target's contigs are") -> UserError:
    shown = ", ".join(found[:5]) + (f" (+{len(found) - 5} more)" if len(found) > 5 else "")
    return UserError(
        path, f"{what} {shown} but the panel is on {panel_contig}",
        f"give the target's records on {panel_contig} (rename contigs with `bcftools annotate --rename-chrs` "
        "if only the naming differs, e.g. 22 vs chr22), or use a store built for that contig",
    )


def _header_contigs(path: str) -> list[str]:
    """Contig IDs declared in the header (##contig lines), without touching an index."""
    return re.findall(r"^##contig=<ID=([^,>]+)", open_vcf(path).raw_header, flags=re.MULTILINE)
