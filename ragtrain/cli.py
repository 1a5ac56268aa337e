"""`ragtrain`: fit, impute, evaluate, bench."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ragprep.cli_support import Device, clean_errors
from ragprep.distributed import finish, is_main_process
from ragprep.progress import console
from ragtrain.fit import FitOptions
from ragtrain.impute import BATCH_SIZE
from ragtrain.retrieval import RetrievalSpec
from stores.errors import UserError

app = typer.Typer(
    help="Train and apply ragsnv imputation models.\n\n"
    "Example: ragtrain fit --store store.zarr --out runs/exp1",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)


class MultiallelicOut(str, Enum):
    split = "split"
    joined = "joined"


class RagMode(str, Enum):
    precomputed = "precomputed"
    online = "online"
    neighbours = "neighbours"
    none = "none"


class Fusion(str, Enum):
    aligned = "aligned"
    full = "full"


class Retrieval(str, Enum):
    auto = "auto"
    faiss = "faiss"
    torch = "torch"


class Selection(str, Enum):
    copying = "copying"
    hamming = "hamming"


_RETRIEVAL = RetrievalSpec()  # the defaults live in the dataclasses; the options show them
_FIT = FitOptions(store="", out="")
_RAG_MODE, _FUSION, _BACKEND = RagMode(_FIT.rag_mode), Fusion(_FIT.fusion), Retrieval(_RETRIEVAL.backend)
_SELECTION = Selection(_RETRIEVAL.selection)


@app.command(epilog="Examples: ragtrain fit --store store.zarr --out runs/exp1 --max-steps 300\n\n"
             "ragtrain fit --store store.zarr --out runs/exp1 --resume    # continues where it stopped\n\n"
             "ragtrain fit --store genome/ --out runs/genome --targets array.vcf.gz    # one model a contig")
def fit(
    ctx: typer.Context,
    store: Annotated[str, typer.Option(help="Embedding store from `ragprep encode` (path or fsspec URL).")],
    out: Annotated[Path, typer.Option(help="Run folder: last.pt, best.pt, metrics.csv (new or empty, unless --resume or --overwrite).")],
    train: Annotated[Path | None, typer.Option(help="Separate training VCF (default: the panel, split by sample; unphased calls are phased first); the panel's validation samples are left out of it.")] = None,
    rag_mode: Annotated[RagMode, typer.Option(help="precomputed (stored memory), online (research baseline), neighbours (retrieved alleles and copying weights, no stored memory: an ablation), none.")] = _RAG_MODE,
    k: Annotated[int, typer.Option(min=1, help="Neighbours retrieved a window.")] = _RETRIEVAL.k,
    retrieval_flank: Annotated[int, typer.Option(min=0, help="Sites each side of a segment whose observed alleles also inform the copying model and retrieval (arrays type ~1 % of sites).")] = _RETRIEVAL.flank,
    segment: Annotated[int, typer.Option(min=0, help="Sites of windows the copying model runs over once per query (0: one window).")] = _RETRIEVAL.segment,
    selection: Annotated[Selection, typer.Option(help="copying: the neighbours the Li-Stephens copying model says the query copies most in the window (and its per-site evidence); hamming: nearest by Hamming over the span.")] = _SELECTION,
    states: Annotated[int, typer.Option(min=0, help="States of the copying model: each query's nearest haplotypes over the span (0: all).")] = _RETRIEVAL.states,
    local_states: Annotated[int, typer.Option(min=0, help="Copying model: also each window's nearest haplotypes, over the window and --local-flank observed sites each side.")] = _RETRIEVAL.local_states,
    local_flank: Annotated[int, typer.Option(min=1, help="Observed sites each side of a window that rank its local states.")] = _RETRIEVAL.local_flank,
    ne: Annotated[float, typer.Option(help="Copying model: effective population size in the switch rate.")] = _RETRIEVAL.ne,
    mismatch: Annotated[float, typer.Option(help="Copying model: allele mismatch probability.")] = _RETRIEVAL.mismatch,
    match_features: Annotated[bool, typer.Option(help="Tell the model how far each neighbour matches the query around each site.")] = _RETRIEVAL.match_features,
    retrieval: Annotated[Retrieval, typer.Option(help="Exact top-k backend: FAISS, or torch (same neighbours).")] = _BACKEND,
    fusion: Annotated[Fusion, typer.Option(help="aligned: each site attends to neighbours at that site; full: all sites.")] = _FUSION,
    fusion_layers: Annotated[str, typer.Option(help="Layers followed by fusion: comma-separated (0-based, -1 the last), or all.")] = "-1",
    neighbour_alleles: Annotated[bool, typer.Option(help="Embed the neighbours' alleles beside their stored states.")] = _FIT.neighbour_alleles,
    adapter: Annotated[bool, typer.Option(help="Light trainable adapter over the memory (LUMEN-style).")] = _FIT.adapter,
    confident: Annotated[float, typer.Option(min=0.0, max=0.5, help="Hidden sites whose copying-model P(ALT) is within this of 0 or 1 keep it; the network runs over the others and the observed sites (0: over every site).")] = _FIT.confident,
    targets: Annotated[Path | None, typer.Option(help="Target VCF to be imputed: train and validate with its typed sites observed and all others hidden (the task impute will face); overrides --mask and --val-mask.")] = None,
    mask: Annotated[str, typer.Option(help="Training masks: random:LO-HI, af:LO-HI, or array:EVERY:MIN_MAF.")] = _FIT.mask,
    val_mask: Annotated[str, typer.Option(help="Fixed validation mask, one a sample over the whole panel (same syntax).")] = _FIT.val_mask,
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.9, help="Samples held out for validation (0: none; best.pt is then the latest).")] = _FIT.val_fraction,
    seed: Annotated[int, typer.Option(help="Seed of split, masks, batch order and new weights.")] = _FIT.seed,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs (one epoch: every window for every training query).")] = _FIT.epochs,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Optimizer steps in all (overrides --epochs).")] = None,
    stop_after: Annotated[int | None, typer.Option(min=1, help="Stop this run after so many steps (checkpointed); continue with --resume.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Query haplotypes a batch (one window a batch).")] = _FIT.batch_size,
    accumulate: Annotated[int, typer.Option(min=1, help="Gradient accumulation steps.")] = _FIT.accumulate,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, warm-up then cosine).")] = _FIT.lr,
    weight_decay: Annotated[float, typer.Option(min=0.0, help="AdamW weight decay.")] = _FIT.weight_decay,
    warmup: Annotated[int, typer.Option(min=1, help="Warm-up steps.")] = _FIT.warmup,
    clip: Annotated[float, typer.Option(help="Gradient norm clipping.")] = _FIT.clip,
    eval_every: Annotated[int, typer.Option(min=1, help="Validate and checkpoint every N steps.")] = _FIT.eval_every,
    device: Annotated[Device, typer.Option(help="auto (CUDA if present), cpu or cuda.")] = Device.auto,
    workers: Annotated[int, typer.Option(min=0, help="Processes building batches (0: one thread beside the step; on a GPU, enough to keep its data wait low; same batches either way).")] = _FIT.workers,
    checkpointing: Annotated[bool, typer.Option(help="Gradient checkpointing (less memory, ~30% more time).")] = _FIT.checkpointing,
    encoder: Annotated[Path | None, typer.Option(help="The checkpoint the store was encoded with (if not a seed).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt exactly where it stopped.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace the run in OUT.")] = False,
) -> None:
    """Train a BERT over query haplotypes that cross-attends to retrieved, precomputed reference memory.

    Under `torchrun --nproc-per-node N` every process trains its share of each batch (DistributedDataParallel:
    NCCL on CUDA, gloo on the CPU); --batch-size is per process. With a genome folder (`ragprep encode` of a
    multi-contig panel) as --store, one model a contig: OUT/CONTIG/.
    """
    from ragtrain.fit import fit as run_fit
    from stores.genome import contig_stores

    with clean_errors():
        values = {name: _plain(value) for name, value in ctx.params.items()}
        spec = RetrievalSpec(k=values.pop("k"), flank=values.pop("retrieval_flank"),
                             segment=values.pop("segment"), selection=values.pop("selection"),
                             states=values.pop("states"), local_states=values.pop("local_states"),
                             local_flank=values.pop("local_flank"), ne=values.pop("ne"), mismatch=values.pop("mismatch"),
                             match_features=values.pop("match_features"), backend=values.pop("retrieval"))
        values["fusion_layers"] = _layers(values["fusion_layers"])
        genome = contig_stores(store)
        jobs = [(None, store, str(out))]
        if genome:
            jobs = [(contig, path, str(out / contig)) for contig, path in genome.items()]
        try:
            for number, (contig, path, run) in enumerate(jobs, start=1):
                if contig is not None and is_main_process():
                    console.print(f"[bold]contig {contig}[/bold] ({number} of {len(jobs)}) -> {run}")
                result = run_fit(FitOptions(**{**values, "store": path, "out": run}, retrieval=spec))
                if is_main_process():
                    best = ("no validation samples" if result.best_r2 == -math.inf
                            else f"best validation r2 {result.best_r2:.4f}")
                    console.print(f"{result.steps} steps, {result.steps_per_s:.2f} steps/s, data wait "
                                  f"{result.data_wait:.1%}; {best}; checkpoints in {run}")
                    print_metrics(result.last_metrics)
        finally:
            finish()


def _plain(value: object) -> object:
    """A CLI value as FitOptions holds it: enums by value, paths as strings."""
    if isinstance(value, Enum):
        return value.value
    return str(value) if isinstance(value, Path) else value


def _layers(text: str) -> tuple[int, ...]:
    """--fusion-layers as FitOptions.fusion_layers: "all" is every layer (the empty tuple)."""
    if text.strip() == "all":
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserError("--fusion-layers", f"cannot read {text!r}", "give layer numbers separated by commas, e.g. 0,2, or all") from None


@app.command(epilog="Example: ragtrain pretrain --store store.zarr --out runs/encoder --max-steps 300\n\n"
               "then: ragprep encode panel.vcf.gz --out trained.zarr --encoder runs/encoder/encoder.pt")
def pretrain(
    store: Annotated[str, typer.Option(help="Store of the panel (its encoder gives the starting weights).")],
    out: Annotated[Path, typer.Option(help="Run folder: encoder.pt, last.pt, metrics.csv.")],
    mask: Annotated[str, typer.Option(help="Masks of the masked-allele objective (random:LO-HI, af:LO-HI, array:N:MAF).")] = "random:0.3-0.8",
    max_steps: Annotated[int, typer.Option(min=1, help="Optimizer steps.")] = 300,
    batch_size: Annotated[int, typer.Option(min=1, help="Haplotypes a batch.")] = _FIT.batch_size,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = _FIT.lr,
    seed: Annotated[int, typer.Option(help="Seed of split, masks and batch order.")] = _FIT.seed,
    device: Annotated[Device, typer.Option(help="auto (CUDA if present), cpu or cuda.")] = Device.auto,
    overwrite: Annotated[bool, typer.Option(help="Replace the run in OUT.")] = False,
) -> None:
    """Train the encoder alone (masked alleles over the panel's haplotypes, no retrieval); write OUT/encoder.pt
    to re-encode the store with (`ragprep encode --encoder`)."""
    from ragtrain.fit import pretrain as run_pretrain

    with clean_errors():
        options = FitOptions(store=store, out=str(out), mask=mask, val_mask=mask, max_steps=max_steps,
                             eval_every=max_steps, batch_size=batch_size, lr=lr, seed=seed, device=device.value,
                             overwrite=overwrite)
        result, path = run_pretrain(options)
    console.print(f"{result.steps} steps; validation masked-allele loss {result.last_metrics.get('val_loss', math.nan):.4f}; "
                  f"encoder in {path}")


class Stitch(str, Enum):
    core = "core"
    average = "average"


@app.command(epilog="Example: ragtrain impute target.vcf.gz --store store.zarr --model runs/exp1/best.pt "
             "--out imputed.vcf.gz\n\n"
             "ragtrain impute target.vcf.gz --store store.zarr --model copying --out imputed.vcf.gz  # no fit needed")
def impute(
    target: Annotated[Path, typer.Argument(help="Target VCF typed at a subset of panel sites (e.g. an array): phased, unphased (phased here first) or partly phased.")],
    store: Annotated[str, typer.Option(help="The store the model was trained on.")],
    model: Annotated[Path, typer.Option(help="Checkpoint of `ragtrain fit` (best.pt or last.pt), or `copying`: the Li-Stephens copying model alone (no training, no stored memory).")],
    out: Annotated[Path, typer.Option(help="Imputed VCF to write (.vcf.gz, bgzipped, tabix-indexed).")],
    batch_size: Annotated[int, typer.Option(min=1, help="Target haplotypes a batch, at most (fewer where the copying model would hold over 512 MB); the output does not depend on it.")] = BATCH_SIZE,
    stitch: Annotated[Stitch, typer.Option(help="Overlaps: average the windows covering a site (measured a little better), or core (the window whose centre holds it wins).")] = Stitch.average,
    region: Annotated[str | None, typer.Option(help="CONTIG or CONTIG:START-END of the target to read.")] = None,
    device: Annotated[Device, typer.Option(help="auto (CUDA if present), cpu or cuda.")] = Device.auto,
    retrieval: Annotated[Retrieval | None, typer.Option(help="Exact top-k backend: FAISS or torch (default: as the model was trained; same neighbours).")] = None,
    workers: Annotated[int, typer.Option(min=0, help="Processes building batches (0: on the CPU the network's own thread, on a GPU one thread beside it; the output does not depend on it).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the phasing of unphased calls (ties between equally near panel haplotypes).")] = 1,
    multiallelic_out: Annotated[MultiallelicOut, typer.Option(help="split: a multiallelic panel record as one biallelic record an ALT (as read, `bcftools norm -m -`); joined: written back as one record (GT, DS, GP, HDS over all its alleles).")] = MultiallelicOut.split,
) -> None:
    """Phase unphased target calls, impute every panel site for every target sample; write phased GT, DS, GP,
    HDS and INFO AF, DR2, IMP."""
    from ragtrain.impute import impute as run_impute

    with clean_errors():
        report = run_impute(str(target), store, str(model), str(out), device=device.value, batch_size=batch_size,
                            stitch=stitch.value, region=region, retrieval=retrieval.value if retrieval else None,
                            workers=workers, seed=seed, join_multiallelic=multiallelic_out == MultiallelicOut.joined)
    console.print(f"wrote {report.path}: {report.samples} samples x {report.sites} sites "
                  f"({report.typed_sites} typed) in {report.seconds:.1f} s, {report.genotypes_per_s:,.0f} genotypes/s")
    console.print(f"[dim]stages: {report.stage_line()}[/dim]")

def print_metrics(metrics: dict) -> None:
    from rich.table import Table

    table = Table(title="validation (masked sites)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if key.startswith(("r2", "val_", "nonref")):
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


@app.command(epilog="Example: ragtrain evaluate beagle.vcf.gz ragsnv.vcf.gz --truth truth.vcf.gz "
             "--store store.zarr --out report/")
def evaluate(
    imputed: Annotated[list[Path], typer.Argument(help="Imputed VCFs with FORMAT/DS (Beagle 5, Minimac4, ragsnv).")],
    truth: Annotated[Path, typer.Option(help="True genotypes of the imputed samples (VCF/BCF with GT).")],
    out: Annotated[Path, typer.Option(help="Report folder: report.csv, report.md, r2_by_maf.png.")],
    store: Annotated[str | None, typer.Option(help="Take MAF from this store's panel (default: from the truth).")] = None,
    all_sites: Annotated[bool, typer.Option(help="Score typed sites too, not only those flagged INFO/IMP.")] = False,
) -> None:
    """Score imputed dosages against the truth per MAF bin: dosage r2, concordance, DR2 calibration."""
    import math

    from rich.table import Table

    from ragtrain.evaluate import evaluate as run_evaluate

    with clean_errors():
        rows = run_evaluate([str(p) for p in imputed], str(truth), str(out), store=store, all_sites=all_sites)

    def fmt(value: float) -> str:
        return "NA" if math.isnan(value) else f"{value:.4f}"

    for name in dict.fromkeys(row["file"] for row in rows):
        table = Table(title=name)
        table.add_column("MAF bin", no_wrap=True)
        for column in ("sites", "genotypes", "r2", "conc.", "non-ref conc.", "mean DR2"):
            table.add_column(column, justify="right")
        for row in (r for r in rows if r["file"] == name):
            table.add_row(row["bin"], str(row["n_sites"]), str(row["n_genotypes"]), fmt(row["r2"]),
                          fmt(row["concordance"]), fmt(row["nonref_concordance"]), fmt(row["mean_dr2"]))
        console.print(table)
    console.print(f"report: {out / 'report.md'}, {out / 'report.csv'}, {out / 'r2_by_maf.png'}")


class BenchConfigName(str, Enum):
    research = "research"
    cpu = "cpu"
    tiny = "tiny"


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@app.command(epilog="Examples: ragtrain bench --config cpu --out bench/    (what `make bench` runs)\n\n"
             "ragtrain bench --config research --modes precomputed,online,none --batch 64 --k 1,8 --out bench/")
def bench(
    config: Annotated[BenchConfigName, typer.Option(help="research (a GPU job), cpu (minutes on 2 cores) or tiny.")] = BenchConfigName.cpu,
    out: Annotated[Path, typer.Option(help="Folder for CONFIG-DEVICE.json, CONFIG-DEVICE.md and work files.")] = Path("bench"),
    modes: Annotated[str, typer.Option(help="Step benchmark modes, comma-separated.")] = "precomputed,online,none",
    batch: Annotated[int | None, typer.Option(min=1, help="Step benchmark batch (default: the config's).")] = None,
    k: Annotated[str | None, typer.Option(help="Neighbours, comma-separated (default: the config's).")] = None,
    suites: Annotated[str, typer.Option(help="Any of step, encode, fit, impute (throughput and stage split, beside Beagle), scale (how cost grows with the panel), maxbatch (the largest batch that runs, per mode at the largest k), comma-separated.")] = "step,encode,fit,impute",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    memory_limit_gb: Annotated[float | None, typer.Option(help="Cap each step process (e.g. 24 to act as a 24 GB card).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds a step case may take before it is recorded as a timeout.")] = 1800.0,
    max_batch: Annotated[int, typer.Option(min=1, help="maxbatch suite: the largest batch probed.")] = 4096,
    max_batch_budget: Annotated[float, typer.Option(help="maxbatch suite: seconds after which no probe starts.")] = 900.0,
    seed: Annotated[int, typer.Option(help="Seed of panel, encoder, masks and weights.")] = 1,
) -> None:
    """Measure peak memory and step time per retrieval mode, encode throughput and store size, data wait, and
    the r2 cost of int8 and smaller memory dims. Writes JSON and a markdown table."""
    import shlex
    import sys

    from ragtrain.bench import SUITES, BenchOptions, run_bench

    with clean_errors():
        chosen_modes, chosen_suites = _csv(modes), _csv(suites)
        for name, given, allowed in (("mode", chosen_modes, tuple(m.value for m in RagMode)), ("suite", chosen_suites, SUITES)):
            unknown = [x for x in given if x not in allowed]
            if unknown or not given:
                raise UserError(f"--{name}s", f"unknown {name} {unknown} in {','.join(given)!r}",
                                f"choose from {', '.join(allowed)}")
        if k and not all(x.isdigit() and int(x) > 0 for x in _csv(k)):
            raise UserError("--k", f"cannot read {k!r}", "write neighbour counts as positive integers, e.g. 1,8")
        ks = tuple(int(x) for x in _csv(k)) if k else ()
        options = BenchOptions(config=config.value, out=str(out), modes=chosen_modes, batch=batch, ks=ks,
                               suites=chosen_suites, device=device, memory_limit_gb=memory_limit_gb,
                               timeout_s=timeout, max_batch=max_batch, max_batch_budget_s=max_batch_budget, seed=seed,
                               command=" ".join(["ragtrain", *map(shlex.quote, sys.argv[1:])]))
        _, stem = run_bench(options)
    console.print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":  # `python -m ragtrain.cli ...` runs the CLI too
    app()
