"""Imputation-quality metrics, as imputation papers report them (Beagle, Minimac): pure numpy.

Arrays are [sites, samples]. `truth` is the true ALT allele count (0, 1, 2); a missing truth genotype is
NaN or negative and is left out of every metric, as is a NaN dosage. Sites fall into MAF bins (MAF_BINS);
metrics pool all (site, sample) pairs of a bin.
"""

from __future__ import annotations

import numpy as np

MAF_BINS: tuple[tuple[float, float], ...] = ((0.0, 0.005), (0.005, 0.01), (0.01, 0.05), (0.05, 0.5))
"""[low, high) MAF bins; the last one is closed: [0.05, 0.5]."""

MAF_TOLERANCE = 1e-7
"""Added to a MAF before binning, so that float32 frequencies such as 5/1000 (stored as 0.0049999999) or
1 - 0.995 land in the bin of their exact value. Far below any real frequency step (1 / 2N)."""


def bin_label(index: int) -> str:
    """'[0, 0.005)', ..., '[0.05, 0.5]' (the last bin is closed)."""
    low, high = MAF_BINS[index]
    close = "]" if index == len(MAF_BINS) - 1 else ")"
    return f"[{low:g}, {high:g}{close}"


BIN_LABELS: tuple[str, ...] = tuple(bin_label(i) for i in range(len(MAF_BINS)))


def maf_from_af(af: np.ndarray) -> np.ndarray:
    """Minor allele frequency min(AF, 1 - AF), float64."""
    af = np.asarray(af, dtype=np.float64)
    return np.minimum(af, 1.0 - af)


def assign_bins(maf: np.ndarray) -> np.ndarray:
    """MAF_BINS index of each MAF (int64); -1 for NaN or a MAF outside [0, 0.5].

    Edges go up: 0.005 is in [0.005, 0.01); 0.5 is in the last bin, [0.05, 0.5].
    """
    maf = np.asarray(maf, dtype=np.float64) + MAF_TOLERANCE
    inner_edges = np.array([high for _, high in MAF_BINS[:-1]])
    bins = np.searchsorted(inner_edges, maf, side="right").astype(np.int64)
    outside = ~np.isfinite(maf) | (maf < 0) | (maf > MAF_BINS[-1][1] + 2 * MAF_TOLERANCE)
    bins[outside] = -1
    return bins


def valid_mask(dosage: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pairs that count: finite dosage and an observed (finite, non-negative) truth."""
    truth = np.asarray(truth, dtype=np.float64)
    return np.isfinite(np.asarray(dosage, dtype=np.float64)) & np.isfinite(truth) & (truth >= 0)


def best_guess(dosage: np.ndarray, gp: np.ndarray | None = None) -> np.ndarray:
    """Best-guess ALT count (int8): argmax of genotype probabilities [..., 3] where given, else round(dosage)
    clipped to 0..2."""
    rounded = np.rint(np.nan_to_num(np.asarray(dosage, dtype=np.float64), nan=0.0))
    called = np.clip(rounded, 0, 2).astype(np.int8)
    if gp is None:
        return called
    gp = np.asarray(gp, dtype=np.float64)
    has_gp = np.isfinite(gp).all(axis=-1)  # a missing GP falls back to round(dosage)
    return np.where(has_gp, np.argmax(np.nan_to_num(gp, nan=-1.0), axis=-1), called).astype(np.int8)


def _pearson_r2(n: np.ndarray, sxx: np.ndarray, syy: np.ndarray, sxy: np.ndarray) -> np.ndarray:
    """Squared correlation from centred sums (sxx = sum (x - mean)^2, ...); NaN where a variance is ~0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = sxy**2 / (sxx * syy)
    tiny = 1e-12 * n  # rounding noise of the means, not variance
    return np.where((n >= 2) & (sxx > tiny) & (syy > tiny), np.minimum(r2, 1.0), np.nan)


def _binned_r2(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Pooled squared Pearson correlation of x and y within each group (flat arrays; two passes)."""
    n = np.bincount(groups, minlength=n_groups).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mx = np.bincount(groups, x, n_groups) / n
        my = np.bincount(groups, y, n_groups) / n
    dx, dy = x - mx[groups], y - my[groups]
    sxx = np.bincount(groups, dx * dx, n_groups)
    syy = np.bincount(groups, dy * dy, n_groups)
    sxy = np.bincount(groups, dx * dy, n_groups)
    return _pearson_r2(n, sxx, syy, sxy)


def minor_allele_dose(dosage: np.ndarray, truth: np.ndarray, af: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dosage and true count [sites, samples] of each site's minor allele (2 - x where ALT is the major allele,
    af > 0.5), so that pooling sites measures imputation, not the differences between the sites' frequencies."""
    major = (np.asarray(af) > 0.5)[:, None]
    return np.where(major, 2 - dosage, dosage), np.where(major, 2 - truth, truth)


def dosage_r2(dosage: np.ndarray, truth: np.ndarray) -> float:
    """Aggregate dosage r2: squared Pearson correlation of dosage and true ALT count over all valid pairs."""
    valid = valid_mask(dosage, truth)
    x = np.asarray(dosage, dtype=np.float64)[valid]
    y = np.asarray(truth, dtype=np.float64)[valid]
    return float(_binned_r2(x, y, np.zeros(x.size, dtype=np.int64), 1)[0])


def site_r2(dosage: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-site squared correlation over samples [sites]; NaN where the truth or the dosage is constant."""
    dosage = np.asarray(dosage, dtype=np.float64)
    valid = valid_mask(dosage, truth)
    sites = np.broadcast_to(np.arange(dosage.shape[0])[:, None], dosage.shape)[valid]
    x, y = dosage[valid], np.asarray(truth, dtype=np.float64)[valid]
    return _binned_r2(x, y, sites, dosage.shape[0])


def concordance(called: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Fraction of valid genotypes whose best-guess ALT count equals the true one; NaN when none."""
    valid = valid_mask(called, truth) if valid is None else valid
    total = int(valid.sum())
    return float((np.asarray(called)[valid] == np.asarray(truth)[valid]).sum() / total) if total else float("nan")


def nonref_concordance(called: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Non-reference concordance: among genotypes where the truth or the best guess is not homozygous REF
    (ALT count > 0), the fraction where they agree. Pairs where both are 0/0 are left out, so the common
    REF/REF calls cannot inflate it (the non-reference discordance of 1000 Genomes / Picard, as 1 - NRD).
    NaN when there is no such genotype."""
    valid = valid_mask(called, truth) if valid is None else valid
    called, truth = np.asarray(called)[valid], np.asarray(truth)[valid]
    nonref = (called > 0) | (truth > 0)
    total = int(nonref.sum())
    return float((called[nonref] == truth[nonref]).sum() / total) if total else float("nan")


def dr2_from_haplotypes(alt_prob: np.ndarray, threshold: float = 0.001) -> np.ndarray:
    """Beagle 5's DR2 (estimated dosage r2) per site from per-haplotype ALT probabilities [sites, haplotypes].

    With p_h the ALT probability of haplotype h over H haplotypes, S = sum p_h, S2 = sum p_h^2:
        DR2 = (S2 - S^2 / H) / (S - S^2 / H)
    i.e. the variance of the estimated haplotype doses over the variance that true 0/1 alleles with the
    estimated frequency S / H would have. 0 where the site is (estimated) monomorphic: min(S, H - S) <
    `threshold`, or the numerator <= 0. This is Beagle 5.x `imp.ImputedRecBuilder.r2`; its derivation is
    in Browning & Browning (2009), Am J Hum Genet 84:210-223, Appendix 1.
    """
    p = np.asarray(alt_prob, dtype=np.float64)
    n_haps = np.isfinite(p).sum(axis=1)  # NaN: a haplotype that is not there (a haploid call's second)
    s, s2 = np.nansum(p, axis=1), np.nansum(p * p, axis=1)
    mean_term = s * s / n_haps
    num, den = s2 - mean_term, s - mean_term
    monomorphic = (np.minimum(s, n_haps - s) < threshold) | (num <= 0) | (den <= 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(monomorphic, 0.0, num / den)


def dr2_from_gp(gp: np.ndarray, min_den: float = 1e-8) -> np.ndarray:
    """Beagle's DR2 per site from genotype probabilities gp [sites, samples, 3] (P(0), P(1), P(2) ALT copies).

    With d_i = P1 + 2 P2 (dosage) and E[x_i^2] = P1 + 4 P2 over n samples:
        DR2 = (sum d_i^2 - (sum d_i)^2 / n) / (sum E[x_i^2] - (sum d_i)^2 / n)
    = var(d) / (mean(E[x^2]) - mean(d)^2): the variance of the dosage over the estimated variance of the true
    count. 0 where the denominator is below `min_den` (monomorphic). This is Beagle's `vcf.R2Estimator.doseR2`
    (Beagle 4.1 / 5), derived in Browning & Browning (2009), Am J Hum Genet 84:210-223, Appendix 1.
    """
    gp = np.asarray(gp, dtype=np.float64)
    gp = gp / np.sum(gp, axis=-1, keepdims=True)
    d = gp[..., 1] + 2 * gp[..., 2]
    ex2 = gp[..., 1] + 4 * gp[..., 2]
    n = d.shape[1]
    s = d.sum(axis=1)
    num = np.maximum((d * d).sum(axis=1) - s * s / n, 0.0)
    den = ex2.sum(axis=1) - s * s / n
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den < min_den, 0.0, num / den)


def summarise(dosage: np.ndarray, truth: np.ndarray, maf: np.ndarray, gp: np.ndarray | None = None,
              dr2: np.ndarray | None = None, af: np.ndarray | None = None) -> list[dict]:
    """Per MAF bin: bin, maf_low, maf_high, n_sites, n_genotypes, r2, concordance, nonref_concordance,
    n_nonref (genotypes behind nonref_concordance), mean_dr2 (NaN unless `dr2` [sites] is given).

    dosage, truth: [sites, samples]; maf: [sites] (sites with NaN MAF are left out); gp: [sites, samples, 3]
    for the best guess (else round(dosage)). Every bin gets a row; an empty one has NaN metrics.
    af: ALT frequency [sites]; when given, r2 pools minor-allele dosages (2 - x where ALT is the major
    allele), so that sites whose ALT is common do not inflate a bin's r2 with between-site variance.
    """
    dosage = np.asarray(dosage, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    bins = assign_bins(maf)
    n_bins = len(MAF_BINS)
    valid = valid_mask(dosage, truth) & (bins >= 0)[:, None]
    groups = np.broadcast_to(bins[:, None], dosage.shape)[valid]
    x, y = dosage[valid], truth[valid]
    dose, count = (x, y) if af is None else (m[valid] for m in minor_allele_dose(dosage, truth, af))
    r2 = _binned_r2(dose, count, groups, n_bins)
    called = best_guess(dosage, gp)[valid]
    hit = called == y
    nonref = (called > 0) | (y > 0)
    n_geno = np.bincount(groups, minlength=n_bins)
    n_nonref = np.bincount(groups[nonref], minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        conc = np.bincount(groups[hit], minlength=n_bins) / n_geno
        nrc = np.bincount(groups[hit & nonref], minlength=n_bins) / n_nonref
    n_sites = np.bincount(bins[bins >= 0], minlength=n_bins)
    mean_dr2 = np.full(n_bins, np.nan)
    if dr2 is not None:
        dr2 = np.asarray(dr2, dtype=np.float64)
        has = (bins >= 0) & np.isfinite(dr2)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_dr2 = np.bincount(bins[has], dr2[has], n_bins) / np.bincount(bins[has], minlength=n_bins)
    return [
        {
            "bin": BIN_LABELS[b], "maf_low": MAF_BINS[b][0], "maf_high": MAF_BINS[b][1],
            "n_sites": int(n_sites[b]), "n_genotypes": int(n_geno[b]), "r2": float(r2[b]),
            "concordance": float(conc[b]), "nonref_concordance": float(nrc[b]), "n_nonref": int(n_nonref[b]),
            "mean_dr2": float(mean_dr2[b]),
        }
        for b in range(n_bins)
    ]
