"""Markdown tables of a `ragtrain bench` run (the JSON beside them holds every figure)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ragtrain.impute import STAGES
from ragtrain.metrics import MAF_BINS, bin_label

if TYPE_CHECKING:
    from ragtrain.bench.suites import BenchResults


def number(value: float | None, fmt: str = ",.1f") -> str:
    """A figure as a table cell: "-" when unknown (None or NaN)."""
    if not _known(value):
        return "-"
    return format(value, fmt)


def _known(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Markdown table lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _rss(row: dict) -> str:
    if row["peak_rss_mb"] is None:
        return "-"
    if row["baseline_rss_mb"] is None:
        return number(row["peak_rss_mb"], ",.0f")
    return f"{row['peak_rss_mb']:,.0f} (+{row['peak_rss_mb'] - row['baseline_rss_mb']:,.0f})"


def accuracy_deltas(fit: list[dict], bins: list[str]) -> list[str]:
    """Each store's r2 minus the first store's (the fp16 reference), per MAF bin."""
    if len(fit) < 2:
        return []
    reference = fit[0]
    lines = [f"r2 minus `{reference['store']}` ({reference['training']}):", ""]
    for row in fit[1:]:
        deltas = ", ".join(f"{b.removeprefix('r2 ')} {row[b] - reference[b]:+.5f}" for b in bins
                           if _known(row.get(b)) and _known(reference.get(b)))
        lines.append(f"- `{row['store']}` ({row['training']}): {deltas or 'no bins with sites'}")
    return lines


def step_ratios(step: list[dict]) -> list[str]:
    """Online over precomputed, per k where both ran: step time and peak memory."""
    lines = []
    by_key = {(row["mode"], row["k"]): row for row in step if row["status"] == "ok"}
    for (mode, k), pre in sorted(by_key.items(), key=lambda item: str(item[0])):
        online = by_key.get(("online", k))
        if mode != "precomputed" or online is None:
            continue
        peak = "peak_allocated_mb" if pre["peak_allocated_mb"] is not None else "peak_rss_mb"
        lines.append(f"- k = {k}: precomputed steps {online['median_step_s'] / pre['median_step_s']:.2f}x as fast "
                     f"as online; peak memory {pre[peak]:,.0f} MB vs {online[peak]:,.0f} MB ({peak}).")
    for row in step:
        if row["mode"] == "online" and row["status"] in ("oom", "killed"):
            lines.append(f"- online, k = {row['k']}, batch {row['batch']}: out of memory ({row['detail']}).")
    return lines


def markdown(results: BenchResults) -> str:
    meta = results.meta
    lines = [f"## `{meta['config']}` on {meta['device']}", "",
             (f"torch {meta['torch']}, Python {meta['python']}, {meta['machine']}, {meta['date']}. "
              f"Command: `{meta['command']}`"), ""]
    if results.step:
        lines += ["### Training step (forward + backward + AdamW), one process a case", ""]
        lines += table(
            ["mode", "k", "batch", "L", "status", "median step ms", "tokens/s", "peak allocated MB",
             "peak reserved MB", "peak RSS MB (over baseline)"],
            [[r["mode"], number(r["k"], "d"), str(r["batch"]), str(r["window"]), r["status"],
              number(r["median_step_s"] and r["median_step_s"] * 1e3), number(r["tokens_per_s"], ",.0f"),
              number(r["peak_allocated_mb"], ",.0f"), number(r["peak_reserved_mb"], ",.0f"),
              _rss(r)] for r in results.step])
        lines += ["", *step_ratios(results.step), ""]
    if results.maxbatch:
        lines += ["### Largest batch that fits (one warm-up and one timed step a probe, each in its own process)", ""]
        lines += table(
            ["mode", "k", "L", "largest batch", "limit", "step ms at it", "peak allocated MB at it", "probes"],
            [[r["mode"], number(r["k"], "d"), str(r["window"]), number(r["largest_batch"], "d"), r["limit"],
              number(r["median_step_s"] and r["median_step_s"] * 1e3), number(r["peak_allocated_mb"], ",.0f"),
              ", ".join(f"{p['batch']} {p['status']}" for p in r["probes"])] for r in results.maxbatch])
        lines += [""]
    if results.encode:
        lines += ["### Encode (`ragprep encode`)", ""]
        lines += table(
            ["store", "L", "haplotypes x sites", "haplotype-sites/s", "windows/s", "encoder s", "write s",
             "bytes/haplotype-site", "on disk MB"],
            [[r["name"], str(r["window"]), f"{r['haplotypes']:,} x {r['sites']:,}",
              number(r["haplotype_sites_per_s"], ",.0f"), number(r["windows_per_s"], ".2f"),
              number(r["encoder_seconds"]), number(r["write_seconds"]), number(r["bytes_per_haplotype_site"]),
              number(r["bytes_on_disk"] / 2**20)] for r in results.encode])
        lines += ["", "Bytes per haplotype-site count every panel site once (window overlaps included).", ""]
    if results.fit:
        bins = [f"r2 {bin_label(i)}" for i in range(len(MAF_BINS))]
        lines += ["### Accuracy cost of the store, and data wait (`ragtrain fit`, precomputed, same budget)", ""]
        lines += table(
            ["store", "model", "steps/s", "data wait", *bins, "r2 all"],
            [[r["store"], r["training"], number(r["steps_per_s"], ".2f"),
              "-" if r["data_wait"] is None else f"{r['data_wait']:.1%}",
              *(number(r.get(b), ".4f") for b in bins), number(r.get("r2_all"), ".4f")] for r in results.fit])
        lines += ["", *accuracy_deltas(results.fit, bins), ""]
    if results.impute:
        lines += ["### Imputation (`ragtrain impute` at the defaults; Beagle 5 on the same split)", ""]
        lines += table(["tool", "samples x sites", "seconds", "genotypes/s", *STAGES],
                        [[r["tool"], f"{r['samples']:,} x {r['sites']:,}", number(r["seconds"]),
                          number(r["genotypes_per_s"], ",.0f"), *(number(r["stages"].get(name)) for name in STAGES)]
                         for r in results.impute])
        lines += ["", ("Stage seconds (ragsnv): on the CPU each batch is built, then run through the network, in one "
                       "thread; on a GPU batches are built in a background thread while the network runs, so the "
                       "stages before `network` overlap it and `waiting for batches` is the time the network sat "
                       "idle."), ""]
    if results.scale:
        lines += ["### How cost grows with the panel (a 32-dim, 1-layer model, default retrieval)", ""]
        lines += table(
            ["haplotypes", "sites", "encode s", "encode haplotype-sites/s", "fit steps/s", "data wait",
             "impute s", "impute genotypes/s"],
            [[f"{r['haplotypes']:,}", f"{r['sites']:,}", number(r["encode_s"]),
              number(r["encode_haplotype_sites_per_s"], ",.0f"), number(r["fit_steps_per_s"], ".2f"),
              f"{r['data_wait']:.1%}", number(r["impute_s"]), number(r["impute_genotypes_per_s"], ",.0f")]
             for r in results.scale])
        lines += [""]
    return "\n".join(lines) + "\n"
