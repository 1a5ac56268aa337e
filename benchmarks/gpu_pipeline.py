"""Stages of `benchmarks/gpu.sh` beyond `ragtrain bench`: encode a carried panel, fit and impute on the store,
then one report of every part.

  python benchmarks/gpu_pipeline.py encode --compressor zstd ...   encode throughput and store size
  python benchmarks/gpu_pipeline.py fit --compressor zstd ...      short `ragtrain fit`: steps/s, data wait, r2
  python benchmarks/gpu_pipeline.py impute --compressor zstd ...   `ragtrain impute` of the held-out targets
  python benchmarks/gpu_pipeline.py report --work W --out O        O/gpu-bench.json and O/gpu-bench.md

Each stage runs in its own process (gpu.sh bounds each with `timeout`) and adds its row to WORK/pipeline.json
as soon as it ends, so a stage that fails or runs out of time leaves the others' results. Retrieval is the
exact torch path (no FAISS on the device). Nothing here imports msprime: the panel is simulated beforehand
(`benchmarks/prepare.sh`).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

STORE_DTYPE = "int8"  # `ragprep encode`'s default
FIT_SEED = 1


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _add(work: Path, stage: str, compressor: str, row: dict) -> None:
    path = work / "pipeline.json"
    results = _load(path)
    results.setdefault(stage, {})[compressor] = row
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"{stage} ({compressor}): " + ", ".join(f"{k} {_fmt(v)}" for k, v in row.items()), flush=True)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _store(work: Path, compressor: str) -> Path:
    return work / f"store-{compressor}.zarr"


def encode_stage(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from ragprep.encode import EncodeOptions, encode
    from ragtrain.bench import CONFIGS
    from stores import open_store

    bert = CONFIGS[args.config].store_bert
    out = _store(args.work, args.compressor)
    report = encode(str(args.panel), str(out), EncodeOptions(config=replace(bert), seed=FIT_SEED,
                                                             memory_dtype=STORE_DTYPE, device=args.device,
                                                             compressor=args.compressor, overwrite=True))
    store = open_store(str(out))
    _add(args.work, "encode", args.compressor, {
        "device": report.device, "model": f"{bert.d_model}/{bert.n_layers}/{bert.n_heads}", "window": bert.window,
        "d_memory": bert.d_memory, "dtype": STORE_DTYPE, "haplotypes": store.n_haplotypes,
        "sites": int(store.positions.size), "windows": report.windows_total, "seconds": report.seconds,
        "encoder_seconds": report.encoder_seconds, "write_seconds": report.write_seconds,
        "haplotype_sites_per_s": report.haplotype_sites_per_s, "bytes_on_disk": store.bytes_on_disk(),
        "bytes_per_haplotype_site": store.bytes_per_haplotype_site(), "mmap": store.mmap})


def fit_stage(args: argparse.Namespace) -> None:
    from ragtrain.fit import FitOptions, Trainer
    from ragtrain.retrieval import RetrievalSpec

    run = args.work / f"fit-{args.label}"
    shutil.rmtree(run, ignore_errors=True)
    started = time.perf_counter()
    result = Trainer(FitOptions(store=str(_store(args.work, args.compressor)), out=str(run), targets=str(args.target),
                                max_steps=args.fit_steps, eval_every=args.fit_steps, batch_size=args.fit_batch,
                                warmup=max(1, args.fit_steps // 10), seed=FIT_SEED, device=args.device,
                                retrieval=RetrievalSpec(backend="torch"), workers=args.workers)).run()
    metrics = result.last_metrics
    _add(args.work, "fit", args.label, {
        "steps": result.steps, "batch": args.fit_batch, "workers": args.workers, "steps_per_s": result.steps_per_s,
        "data_wait": result.data_wait, "seconds": time.perf_counter() - started,
        **{key: value for key, value in metrics.items() if key.startswith(("r2", "nonref"))}})


def impute_stage(args: argparse.Namespace) -> None:
    from ragtrain.impute import impute

    model = "copying" if args.copying else str(args.work / f"fit-{args.label}" / "last.pt")
    target = args.target
    if getattr(args, "unphased", False):  # an array lab's genotypes: impute phases them first
        from ragprep.split import unphase_vcf

        target = args.work / "target.unphased.vcf.gz"
        unphase_vcf(args.target, target, seed=1)
    report = impute(str(target), str(_store(args.work, args.compressor)), model,
                    str(args.work / f"imputed-{args.label}.vcf.gz"), device=args.device, retrieval="torch",
                    workers=args.workers)
    _add(args.work, "impute", args.label, {
        "samples": report.samples, "sites": report.sites, "typed_sites": report.typed_sites, "workers": args.workers,
        "seconds": report.seconds, "genotypes_per_s": report.genotypes_per_s, "stages": report.stages})


# --- report -------------------------------------------------------------------------------------------------
def _demote(markdown: str) -> str:
    """Headings one level down, to sit under this report's own."""
    return "\n".join("#" + line if line.startswith("#") else line for line in markdown.splitlines())


def pipeline_markdown(pipeline: dict) -> list[str]:
    from ragtrain.bench.report import number, table

    lines = []
    encode, fit, impute = pipeline.get("encode", {}), pipeline.get("fit", {}), pipeline.get("impute", {})
    compressors = list(dict.fromkeys([*encode, *fit, *impute]))
    if encode:
        first = next(iter(encode.values()))
        title = (f"### Encode: model {first['model']}, L {first['window']}, d_memory {first['d_memory']}, "
                 f"{first['dtype']}, {first['haplotypes']:,} haplotypes x {first['sites']:,} sites")
        lines += [title, ""]
        lines += table(["store", "memory-mapped reads", "seconds", "encoder s", "write s", "haplotype-sites/s",
                         "bytes/haplotype-site", "on disk MB"],
                        [[c, str(r["mmap"]), number(r["seconds"], ".1f"), number(r["encoder_seconds"], ".1f"),
                          number(r["write_seconds"], ".1f"), number(r["haplotype_sites_per_s"], ",.0f"),
                          number(r["bytes_per_haplotype_site"], ".2f"), number(r["bytes_on_disk"] / 2**20, ".1f")]
                         for c, r in encode.items()])
        lines += [""]
    if fit or impute:
        lines += ["### Fit (precomputed, --targets, torch retrieval) and impute of the held-out targets", ""]
        rows = []
        for c in compressors:
            f, i = fit.get(c, {}), impute.get(c, {})
            rows.append([c, number(f.get("steps"), "d"), number(f.get("batch"), "d"), number(f.get("workers"), "d"),
                         number(f.get("steps_per_s"), ".2f"),
                         number(f.get("data_wait"), ".1%"), number(f.get("r2_all"), ".4f"),
                         number(f.get("seconds"), ".1f"), number(i.get("seconds"), ".1f"),
                         number(i.get("genotypes_per_s"), ",.0f")])
        lines += table(["run", "fit steps", "batch", "workers", "steps/s", "data wait", "validation r2",
                         "fit s (load, validation)", "impute s", "impute genotypes/s"], rows)
        lines += [""]
    return lines


def report(args: argparse.Namespace) -> None:
    """WORK/{env.txt, parts.tsv, step/, maxbatch/, pipeline.json} -> OUT/gpu-bench.json, OUT/gpu-bench.md."""
    from ragtrain.bench.report import table

    work, out = args.work, args.out
    parts = []
    parts_file = work / "parts.tsv"
    if parts_file.exists():
        for line in parts_file.read_text().splitlines():
            name, status, seconds = line.split("\t")
            parts.append({"part": name, "status": status, "seconds": float(seconds)})
    bench = {}
    for suite in ("step", "maxbatch"):
        found = sorted((work / suite).glob("*.json"))
        bench[suite] = {"json": _load(found[0]), "md": found[0].with_suffix(".md").read_text()} if found else None
    pipeline = _load(work / "pipeline.json")
    env = (work / "env.txt").read_text() if (work / "env.txt").exists() else ""
    data = {"env": env, "python": platform.python_version(), "parts": parts,
            "step": bench["step"] and bench["step"]["json"], "maxbatch": bench["maxbatch"] and bench["maxbatch"]["json"],
            "pipeline": pipeline}
    (out / "gpu-bench.json").write_text(json.dumps(data, indent=1) + "\n")
    lines = ["# GPU benchmark (`benchmarks/gpu.sh`)", "", "## Parts", ""]
    lines += table(["part", "status", "seconds"], [[p["part"], p["status"], f"{p['seconds']:.0f}"] for p in parts])
    lines += ["", "## Environment", "", "```", env.strip(), "```", ""]
    for suite, title in (("step", "## Training step (`ragtrain bench --suites step`)"),
                         ("maxbatch", "## Largest batch (`ragtrain bench --suites maxbatch`)")):
        lines += [title, ""]
        lines += [_demote(bench[suite]["md"])] if bench[suite] else ["no results", ""]
    lines += ["## Encode, fit, impute (`benchmarks/gpu_pipeline.py`)", ""]
    lines += pipeline_markdown(pipeline) or ["no results", ""]
    (out / "gpu-bench.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'gpu-bench.json'} and {out / 'gpu-bench.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("encode", "fit", "impute", "report"))
    parser.add_argument("--work", type=Path, required=True, help="Folder of stores, runs and pipeline.json.")
    parser.add_argument("--out", type=Path, help="report: folder of gpu-bench.json and gpu-bench.md.")
    parser.add_argument("--panel", type=Path, help="Panel VCF (its held-out targets: PANEL.target.vcf.gz).")
    parser.add_argument("--config", default="research", help="ragtrain bench config whose store encoder is used.")
    parser.add_argument("--compressor", default="zstd", choices=("zstd", "none"))
    parser.add_argument("--fit-steps", type=int, default=150)
    parser.add_argument("--fit-batch", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=0, help="Batch-building processes for fit and impute.")
    parser.add_argument("--label", help="Row name (default: the compressor).")
    parser.add_argument("--copying", action="store_true", help="impute: the copying model alone (no fit needed).")
    parser.add_argument("--unphased", action="store_true", help="impute: the targets unphased first (times phasing).")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stage == "report":
        args.out.mkdir(parents=True, exist_ok=True)
        report(args)
        return
    args.target = Path(str(args.panel).removesuffix(".vcf.gz") + ".target.vcf.gz")
    args.label = args.label or args.compressor
    {"encode": encode_stage, "fit": fit_stage, "impute": impute_stage}[args.stage](args)


if __name__ == "__main__":
    main()
