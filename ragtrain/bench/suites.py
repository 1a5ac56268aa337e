"""`ragtrain bench`: the memory and speed claim, store size and the accuracy cost of storage choices, measured.

Suites:
  step      training step per mode x k at one batch size, each case in its own process (`ragtrain.bench.step`)
  encode    `ragprep encode` of a simulated panel: fp16 and int8 memory, two memory dims; throughput, time split
            between encoder and store writes, bytes per haplotype-site on disk
  fit       `ragtrain fit` (precomputed) on each of those stores with one training budget: validation r2 by MAF
            bin (the accuracy cost of dtype and dim) and the fraction of step time spent waiting for data
  impute    `ragtrain impute` at the defaults on a simulated split: genotypes/s and the seconds of each stage,
            beside Beagle 5 on the same split where `beagle` is installed
  scale     encode, fit steps and impute on panels of growing haplotype counts (a small model)
  maxbatch  per mode at the largest k: the largest batch whose training step runs (doubling from the step
            batch, or halving where it fails), each probe in its own process
Results go to OUT/CONFIG-DEVICE.json and a markdown table beside it, rewritten as each case and suite ends (a
run stopped midway keeps what it measured).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ragprep.encode import EncodeOptions, encode, resolve_device
from ragprep.model import PRESETS, BertConfig
from ragprep.progress import console
from ragtrain.bench.report import markdown
from ragtrain.bench.step import StepCase, StepResult, describe_device
from ragtrain.fit import FitOptions, Trainer
from ragtrain.impute import impute
from stores import open_store

SUITES = ("step", "encode", "fit", "impute", "scale", "maxbatch")
DEFAULT_SUITES = ("step", "encode", "fit", "impute")
FIT_MASK = "array:8:0.05"  # train and validate as a SNP array would type the queries


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark configuration: the step model and batch, and the panel and budget of encode/fit."""
    bert: BertConfig  # step benchmark model
    batch: int
    ks: tuple[int, ...]
    store_bert: BertConfig  # encoder of the encode/fit suites; its d_memory is the first of memory_dims
    memory_dims: tuple[int, int]
    panel_samples: int
    panel_length: float
    fit_steps: int
    fit_batch: int
    step_warmup: int = 3
    step_steps: int = 10
    scale_haplotypes: tuple[int, ...] = (1000, 2000, 4000, 8000)  # the scale suite's panels
    scale_length: float = 1e5
    scale_steps: int = 10
    scale_targets: int = 20
    impute_samples: int = 500  # the impute suite's split: reference samples + held-out targets, length in bp
    impute_targets: int = 50
    impute_length: float = 5e5
    impute_steps: int = 20  # fit steps before imputing (speed does not depend on them)


CPU_BERT = BertConfig(d_model=64, n_layers=2, n_heads=4, window=256, d_memory=32, ffn_mult=4)  # as docs/bench measured it
CONFIGS: dict[str, BenchConfig] = {
    # the configuration that ran out of memory on an 80 GB A100 in the research code (a GPU job)
    "research": BenchConfig(bert=PRESETS["research"], batch=64, ks=(1, 4, 8),
                            store_bert=replace(PRESETS["research"], d_memory=64), memory_dims=(64, 32),
                            panel_samples=1000, panel_length=1e6, fit_steps=1000, fit_batch=64),
    # scaled to finish in minutes on two CPU cores
    "cpu": BenchConfig(bert=CPU_BERT, batch=16, ks=(1, 4), store_bert=replace(CPU_BERT, window=128),
                       memory_dims=(32, 16), panel_samples=300, panel_length=5e5, fit_steps=120, fit_batch=32),
    # the test suite's smoke run
    "tiny": BenchConfig(bert=BertConfig(d_model=16, n_layers=1, n_heads=2, window=32, d_memory=8), batch=4,
                        ks=(1, 2), store_bert=BertConfig(d_model=16, n_layers=1, n_heads=2, window=32, d_memory=8),
                        memory_dims=(8, 4), panel_samples=30, panel_length=5e4, fit_steps=3, fit_batch=8,
                        step_warmup=1, step_steps=2, scale_haplotypes=(40, 80), scale_length=2e4, scale_steps=2,
                        scale_targets=4, impute_samples=30, impute_targets=4, impute_length=2e4, impute_steps=2),
}


@dataclass
class BenchOptions:
    config: str = "cpu"
    out: str = "bench"
    modes: tuple[str, ...] = ("precomputed", "online", "none")
    batch: int | None = None  # default: the config's
    ks: tuple[int, ...] = ()  # default: the config's
    suites: tuple[str, ...] = DEFAULT_SUITES
    device: str = "auto"
    memory_limit_gb: float | None = None
    timeout_s: float = 1800.0
    max_batch: int = 4096  # maxbatch suite: the largest batch probed
    max_batch_budget_s: float = 900.0  # maxbatch suite: no probe starts after this long
    seed: int = 1
    command: str = ""


@dataclass
class BenchResults:
    meta: dict
    step: list[dict] = field(default_factory=list)
    encode: list[dict] = field(default_factory=list)
    fit: list[dict] = field(default_factory=list)
    impute: list[dict] = field(default_factory=list)
    scale: list[dict] = field(default_factory=list)
    maxbatch: list[dict] = field(default_factory=list)


# --- step ---------------------------------------------------------------------------------------------------
def step_cases(config: BenchConfig, options: BenchOptions) -> list[StepCase]:
    """mode x k; mode none retrieves nothing, so it runs once."""
    batch, ks = options.batch or config.batch, options.ks or config.ks
    cases = []
    for mode in options.modes:
        for k in (ks[:1] if mode == "none" else ks):
            cases.append(StepCase(bert=config.bert, mode=mode, k=k, batch=batch, warmup=config.step_warmup,
                                  steps=config.step_steps, device=options.device, seed=options.seed,
                                  memory_limit_gb=options.memory_limit_gb))
    return cases


def run_step_case(case: StepCase, timeout_s: float) -> StepResult:
    """`case` in a fresh Python process; a kill or timeout is recorded as the result."""
    command = [sys.executable, "-m", "ragtrain.bench.step", json.dumps(case.to_dict())]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return StepResult(status="timeout", detail=f"no result within {timeout_s:.0f} s")
    if done.returncode == 0:
        return StepResult(**json.loads(done.stdout.strip().splitlines()[-1]))
    if done.returncode in (-9, 137):
        return StepResult(status="killed", detail="SIGKILL: most likely the kernel's out-of-memory killer")
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return StepResult(status="error", detail=f"exit {done.returncode}: {tail}"[:300])


def step_suite(config: BenchConfig, options: BenchOptions) -> Iterator[dict]:
    """One row a case, as each ends."""
    for case in step_cases(config, options):
        console.print(f"step: {case.mode}, k {case.k}, batch {case.batch}, L {case.bert.window} ...")
        result = run_step_case(case, options.timeout_s)
        row = {"mode": case.mode, "k": case.k if case.mode != "none" else None, "batch": case.batch,
               "window": case.bert.window, **asdict(result)}
        console.print(f"  {summarise_step(row)}")
        yield row


def summarise_step(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row['detail']}"
    peak = row["peak_allocated_mb"] if row["peak_allocated_mb"] is not None else row["peak_rss_mb"]
    return f"{row['median_step_s'] * 1e3:.1f} ms/step, {row['tokens_per_s']:,.0f} tokens/s, peak {peak:,.0f} MB"


# --- encode and fit -----------------------------------------------------------------------------------------
def store_variants(config: BenchConfig) -> list[dict]:
    """The stores compared: fp16 and int8 at the first memory dim, fp16 at the second."""
    big, small = config.memory_dims
    return [{"name": f"fp16-d{big}", "dtype": "float16", "d_memory": big},
            {"name": f"int8-d{big}", "dtype": "int8", "d_memory": big},
            {"name": f"fp16-d{small}", "dtype": "float16", "d_memory": small}]


def encode_suite(config: BenchConfig, options: BenchOptions, work: Path) -> list[dict]:
    panel = work / "panel.vcf.gz"
    if not panel.exists():
        from ragprep.simulate import simulate_panel  # msprime and pysam: only where a panel is simulated

        simulate_panel(panel, config.panel_samples, config.panel_length, options.seed)
    rows = []
    for variant in store_variants(config):
        out = work / f"store-{variant['name']}.zarr"
        encoder = replace(config.store_bert, d_memory=variant["d_memory"])
        report = encode(str(panel), str(out), EncodeOptions(config=encoder, seed=options.seed,
                                                            memory_dtype=variant["dtype"], device=options.device,
                                                            overwrite=True))
        store = open_store(str(out))
        panel_sites = store.n_haplotypes * int(store.positions.size)
        rows.append({
            **variant, "store": str(out), "device": report.device, "window": store.plan.length,
            "haplotypes": store.n_haplotypes, "sites": int(store.positions.size), "windows": report.windows_total,
            "seconds": report.seconds, "encoder_seconds": report.encoder_seconds,
            "write_seconds": report.write_seconds, "haplotype_sites_per_s": report.haplotype_sites_per_s,
            "windows_per_s": report.windows_encoded / max(report.seconds, 1e-9),
            "bytes_on_disk": store.bytes_on_disk(),
            "bytes_per_haplotype_site": store.bytes_on_disk() / panel_sites,  # per panel site; overlaps included
        })
        console.print(f"encode {variant['name']}: {report.haplotype_sites_per_s:,.0f} haplotype-sites/s, "
                      f"{rows[-1]['bytes_per_haplotype_site']:.1f} bytes/haplotype-site")
    return rows


def fit_options(config: BenchConfig, options: BenchOptions, store: str, out: Path, resume: bool = False) -> FitOptions:
    return FitOptions(store=store, out=str(out), max_steps=config.fit_steps, eval_every=config.fit_steps,
                      batch_size=config.fit_batch, seed=options.seed, mask=FIT_MASK, val_mask=FIT_MASK,
                      device=options.device, warmup=max(1, config.fit_steps // 10), resume=resume)


def fit_suite(config: BenchConfig, options: BenchOptions, encoded: list[dict], work: Path) -> list[dict]:
    """One training budget per store; then the fp16-trained model validated on int8 memory (quantisation only)."""
    rows, runs = [], {}
    for variant in encoded:
        run = work / f"fit-{variant['name']}"
        shutil.rmtree(run, ignore_errors=True)
        result = Trainer(fit_options(config, options, variant["store"], run)).run()
        runs[variant["name"]] = run
        rows.append(fit_row(variant["name"], "trained on it", result.last_metrics, result.steps_per_s,
                            result.data_wait))
    fp16, int8 = encoded[:2]
    swapped = work / "fit-int8-inference"
    shutil.rmtree(swapped, ignore_errors=True)
    shutil.copytree(runs[fp16["name"]], swapped)
    trainer = Trainer(fit_options(config, options, int8["store"], swapped, resume=True))
    rows.append(fit_row(int8["name"], f"model trained on {fp16['name']}", trainer.validate(), None, None))
    return rows


def fit_row(store: str, training: str, metrics: dict, steps_per_s: float | None, data_wait: float | None) -> dict:
    return {"store": store, "training": training, "steps_per_s": steps_per_s, "data_wait": data_wait,
            **{key: value for key, value in metrics.items() if key.startswith(("r2", "val_", "nonref"))}}


# --- impute -----------------------------------------------------------------------------------------------
def impute_suite(config: BenchConfig, options: BenchOptions, work: Path) -> list[dict]:
    """`ragtrain impute` at the defaults (encoder, retrieval, model) on a simulated split, with its stage split;
    then Beagle on the same split where it is installed."""
    from ragprep.simulate import simulate_split  # msprime and pysam: only where a panel is simulated

    root = work / "impute"
    shutil.rmtree(root, ignore_errors=True)
    paths = simulate_split(root / "panel.vcf.gz", samples=config.impute_samples, holdout=config.impute_targets,
                           length=config.impute_length, seed=options.seed)
    store = str(root / "store.zarr")
    encode(str(paths["panel"]), store, EncodeOptions(seed=options.seed, device=options.device))
    Trainer(FitOptions(store=store, out=str(root / "run"), targets=str(paths["target"]), max_steps=config.impute_steps,
                       eval_every=config.impute_steps, seed=options.seed, device=options.device)).run()
    report = impute(str(paths["target"]), store, str(root / "run" / "last.pt"), str(root / "ragsnv.vcf.gz"),
                    device=options.device)
    rows = [{"tool": "ragsnv", "samples": report.samples, "sites": report.sites, "seconds": report.seconds,
             "genotypes_per_s": report.genotypes_per_s, "stages": report.stages}]
    console.print(f"impute: {report.genotypes_per_s:,.0f} genotypes/s; {report.stage_line()}")
    beagle = shutil.which("beagle")
    if beagle:
        started = time.perf_counter()
        done = subprocess.run([beagle, f"ref={paths['panel']}", f"gt={paths['target']}", f"out={root / 'beagle'}",
                               f"seed={options.seed}", f"nthreads={_cpu_count()}"], capture_output=True, check=False)
        seconds = time.perf_counter() - started
        if done.returncode == 0:
            rows.append({"tool": "beagle", "samples": report.samples, "sites": report.sites, "seconds": seconds,
                         "genotypes_per_s": report.samples * report.sites / seconds, "stages": {}})
            console.print(f"beagle: {rows[-1]['genotypes_per_s']:,.0f} genotypes/s")
    return rows


# --- scale ------------------------------------------------------------------------------------------------
SCALE_BERT = BertConfig(d_model=32, n_layers=1, n_heads=2, window=128, d_memory=16)


def scale_suite(config: BenchConfig, options: BenchOptions, work: Path) -> list[dict]:
    """Encode, fit steps and impute on simulated panels of growing haplotype counts (a small model, the
    default retrieval): how each stage's cost grows with haplotypes x sites."""
    from ragprep.simulate import simulate_split  # msprime and pysam: only where a panel is simulated

    rows = []
    for haplotypes in config.scale_haplotypes:
        root = work / f"scale-{haplotypes}"
        shutil.rmtree(root, ignore_errors=True)
        paths = simulate_split(root / "panel.vcf.gz", samples=haplotypes // 2, holdout=config.scale_targets,
                               length=config.scale_length, seed=options.seed)
        store = str(root / "store.zarr")
        encoded = encode(str(paths["panel"]), store, EncodeOptions(config=SCALE_BERT, seed=options.seed,
                                                                    device=options.device))
        fitted = Trainer(FitOptions(store=store, out=str(root / "run"), max_steps=config.scale_steps,
                                    eval_every=config.scale_steps, batch_size=config.fit_batch, seed=options.seed,
                                    device=options.device, val_fraction=0.05)).run()
        started = time.perf_counter()
        imputed = impute(str(paths["target"]), store, str(root / "run" / "last.pt"), str(root / "imputed.vcf.gz"),
                         device=options.device)
        sites = int(open_store(store).plan.n_sites)
        rows.append({"haplotypes": haplotypes, "sites": sites, "haplotype_sites": haplotypes * sites,
                     "encode_s": encoded.seconds, "encode_haplotype_sites_per_s": encoded.haplotype_sites_per_s,
                     "fit_steps_per_s": fitted.steps_per_s, "data_wait": fitted.data_wait,
                     "impute_s": time.perf_counter() - started, "impute_genotypes_per_s": imputed.genotypes_per_s})
        console.print(f"scale {haplotypes}: encode {encoded.seconds:.1f} s, fit {fitted.steps_per_s:.2f} steps/s, "
                      f"impute {rows[-1]['impute_s']:.1f} s")
    return rows


# --- largest batch ------------------------------------------------------------------------------------------
def max_batch_suite(config: BenchConfig, options: BenchOptions) -> Iterator[dict]:
    """Per mode, at the largest k: the largest batch that runs a training step (one warm-up and one timed step a
    probe, each in its own process). One row a mode, as each ends; no probe starts after the suite's budget."""
    batch, ks = options.batch or config.batch, options.ks or config.ks
    deadline = time.monotonic() + options.max_batch_budget_s
    for mode in options.modes:
        case = StepCase(bert=config.bert, mode=mode, k=max(ks), batch=batch, warmup=1, steps=1, device=options.device,
                        seed=options.seed, memory_limit_gb=options.memory_limit_gb)
        console.print(f"largest batch: {mode}, k {case.k}, from {batch} ...")
        row = {"mode": mode, "k": case.k if mode != "none" else None, "window": case.bert.window,
               **largest_batch(case, options.max_batch, options.timeout_s, deadline)}
        console.print(f"  largest {row['largest_batch']}; limit: {row['limit']}")
        yield row


def largest_batch(case: StepCase, cap: int, timeout_s: float, deadline: float) -> dict:
    """Double case.batch while the step runs (up to `cap`); where case.batch itself fails, halve until one runs.
    limit: what stopped the search ("oom at 512", "cap 4096", "time budget")."""
    probes: list[dict] = []

    def probe(batch: int) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        result = run_step_case(replace(case, batch=batch), min(timeout_s, left))
        probes.append({"batch": batch, "status": result.status, "median_step_s": result.median_step_s,
                       "peak_allocated_mb": result.peak_allocated_mb, "peak_rss_mb": result.peak_rss_mb,
                       "detail": result.detail})
        return result.status == "ok"

    batch = case.batch
    if probe(batch):
        while batch * 2 <= cap and probe(batch * 2):
            batch *= 2
    else:
        while batch > 1 and not probe(batch // 2) and time.monotonic() < deadline:
            batch //= 2
    fits = [p for p in probes if p["status"] == "ok"]
    best = max(fits, key=lambda p: p["batch"], default=None)
    above = [p for p in probes if p["status"] != "ok" and (best is None or p["batch"] > best["batch"])]
    failed = min(above, key=lambda p: p["batch"], default=None)
    if failed is not None:
        limit = f"{failed['status']} at {failed['batch']}"
    elif best is not None and best["batch"] * 2 > cap:
        limit = f"cap {cap}"
    else:
        limit = "time budget"
    return {"largest_batch": best["batch"] if best else None, "limit": limit,
            "median_step_s": best["median_step_s"] if best else None,
            "peak_allocated_mb": best["peak_allocated_mb"] if best else None,
            "peak_rss_mb": best["peak_rss_mb"] if best else None, "probes": probes}


# --- driver -------------------------------------------------------------------------------------------------
def run_bench(options: BenchOptions) -> tuple[BenchResults, Path]:
    config = CONFIGS[options.config]
    device = resolve_device(options.device)
    results = BenchResults(meta={
        "config": options.config, "device": describe_device(device), "torch": torch.__version__,
        "python": platform.python_version(), "machine": f"{platform.machine()}, {_cpu_count()} CPUs",
        "date": datetime.date.today().isoformat(), "command": options.command,
        "bench_config": json.loads(json.dumps(asdict(config))),
    })
    out = Path(options.out)
    work = out / f"work-{options.config}"
    work.mkdir(parents=True, exist_ok=True)
    stem = out / f"{options.config}-{device.type}"

    def save() -> None:
        stem.with_suffix(".json").write_text(json.dumps(_nan_to_none(asdict(results)), indent=1) + "\n")
        stem.with_suffix(".md").write_text(markdown(results))

    if "step" in options.suites:
        for row in step_suite(config, options):
            results.step.append(row)
            save()
    if "maxbatch" in options.suites:
        for row in max_batch_suite(config, options):
            results.maxbatch.append(row)
            save()
    if "encode" in options.suites or "fit" in options.suites:
        results.encode = encode_suite(config, options, work)
        save()
    if "fit" in options.suites:
        results.fit = fit_suite(config, options, results.encode, work)
        save()
    if "impute" in options.suites:
        results.impute = impute_suite(config, options, work)
        save()
    if "scale" in options.suites:
        results.scale = scale_suite(config, options, work)
    save()
    return results, stem


def _nan_to_none(value):
    """NaN (an empty MAF bin) as JSON null: strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(item) for item in value]
    return value


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
