"""`ragtrain impute`: every panel site for every target haplotype, through the store's window plan, fit's retrieval
and model. `Imputer` is the one way a trained model predicts (impute, fit's validation, benchmarks)."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ragprep.encode import resolve_device
from ragprep.progress import StageClock, console, progress_bar
from ragprep.vcf import parse_region, record_contigs
from ragtrain.checkpoint import load_checkpoint
from ragtrain.data import BatchBuilder, Prefetcher, QuerySet, external_queries, inference_plan
from ragtrain.model import RagImputer, batch_logits
from ragtrain.phasing import phase_targets
from ragtrain.retrieval import RetrievalSpec
from ragtrain.targets import load_targets
from ragtrain.vcf_writer import Sites, check_output, concatenate_vcfs, write_imputed_vcf
from stores import EmbeddingStore, open_store
from stores.errors import UserError
from stores.genome import contig_stores
from stores.lock import output_lock

Stitch = Literal["core", "average"]
BATCH_SIZE = 256
"""Target haplotypes a batch, at most (`Imputer.batch_rows`): `make compare`'s 200 in one batch took 10 % less CPU
than in batches of 128 (each window's store chunk decoded once, fewer steps of the copying model)."""
COPYING_BYTES = 512 * 2**20
"""A batch's copying pass keeps its posteriors (observed steps x haplotypes x states, float32) under this: fewer
haplotypes a batch where the targets type many sites of a segment's span."""
CPU_CHUNK_BYTES = 16 * 2**20
"""On the CPU, the network's largest activation a chunk of queries: glibc hands blocks over 32 MB back to the
system when freed, so larger ones page-fault afresh every batch (measured: a batch of 64 at the defaults ran
1.4x slower whole than in chunks of 16, with the same logits bit for bit)."""


STAGES = ("read targets", "phasing", "state selection", "copying model", "store reads", "batch assembly", "network",
          "stitching", "waiting for batches", "write VCF")
"""The stages of `impute`, in order. On the CPU each batch is built, then run through the network, in one thread;
on a GPU batches are built in a background thread while the network runs, so the stages before "network"
overlap it, and "waiting for batches" is the time the network sat idle (or, `--workers`, in worker processes)."""


@dataclass
class ImputeReport:
    path: Path
    samples: int
    sites: int
    typed_sites: int
    seconds: float
    stages: dict[str, float]  # seconds per STAGES name

    @property
    def genotypes_per_s(self) -> float:
        return self.samples * self.sites / max(self.seconds, 1e-9)

    def stage_line(self) -> str:
        return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.stages.items())


COPYING = "copying"
"""`--model copying`: impute with the copying model alone (no trained network, no stored memory)."""


class Imputer:
    """A trained model against its store: stitched P(ALT) for query haplotypes, as `ragtrain impute` writes
    them. Fit's validation and the benchmarks use the same object, so validation scores what impute writes.
    `model` None imputes with the copying model alone: its P(ALT), which the network starts from.

    panel_alleles: the panel in memory (fit holds it anyway), or None to read one key span at a time."""

    def __init__(self, model: RagImputer | None, retrieval: RetrievalSpec, store: EmbeddingStore, device: torch.device,
                 batch_size: int = BATCH_SIZE, stitch: Stitch = "average", panel_alleles: np.ndarray | None = None,
                 clock: StageClock | None = None, workers: int = 0) -> None:
        self.model, self.retrieval, self.store, self.device = model, retrieval, store, device
        self.batch_size, self.stitch, self.workers = batch_size, stitch, workers
        self.panel_alleles = panel_alleles
        self.clock = clock or StageClock()

    @classmethod
    def load(cls, path: str | Path, store: EmbeddingStore, device: torch.device, backend: str | None = None,
             **kwargs) -> Imputer:
        """From a `ragtrain fit` checkpoint, or the copying model alone at its defaults (`path` "copying");
        `backend` overrides the retrieval backend (same neighbours)."""
        if str(path) == COPYING:
            retrieval = RetrievalSpec() if backend is None else RetrievalSpec(backend=backend)
            return cls(None, retrieval, store, device, **kwargs)
        ckpt = load_checkpoint(path, store)
        model = RagImputer(ckpt.model_config, ckpt.retrieval)
        model.load_state_dict(ckpt.state["model"])
        retrieval = ckpt.retrieval if backend is None else replace(ckpt.retrieval, backend=backend)
        return cls(model.to(device), retrieval, store, device, **kwargs)

    def batch_rows(self, queries: QuerySet) -> int:
        """Queries a batch: `batch_size`, or fewer where their copying pass's posteriors would pass COPYING_BYTES
        (the most sites a query observes in a segment's span, times the copying model's states)."""
        plan, spec = self.store.plan, self.retrieval
        steps, window = 1, 0
        while window < plan.n_windows:
            span = plan.key_span(window, spec.flank, spec.segment)
            steps = max(steps, int((queries.alleles[:, span] >= 0).sum(axis=1).max(initial=0)))
            window = plan.segment_windows(window, spec.segment, spec.flank).stop
        n_hap = self.store.n_haplotypes
        states = min(2 * spec.states, n_hap) if spec.states > 0 else n_hap
        return max(1, min(self.batch_size, COPYING_BYTES // (4 * steps * states)))

    def network_rows(self) -> int:
        """Queries the network takes at once: the whole batch on a GPU, or when the model runs only over the
        sites it can change (it packs them itself: `ragtrain.model.network_passes`); else, on the CPU, as many
        as keep its largest activation under CPU_CHUNK_BYTES: the FFN's, the fused memory's keys and values
        (k x 2 d_model a site), or online the neighbours' FFNs (k x the FFN)."""
        if self.device.type != "cpu" or self.model.prunes:  # pruned: the model packs its rows itself
            return self.batch_size
        bert, mode, k = self.model.config.bert, self.model.config.rag_mode, self.retrieval.k
        fused = max(bert.ffn_mult, 2 * k)
        widths = {"none": bert.ffn_mult, "precomputed": fused, "neighbours": fused, "online": k * bert.ffn_mult}
        return max(1, CPU_CHUNK_BYTES // (4 * bert.window * bert.d_model * widths[mode]))

    @torch.inference_mode()
    def probabilities(self, queries: QuerySet, show_progress: bool = True) -> np.ndarray:
        """P(ALT) float32 [sites, queries]; queries carry -1 at the sites to impute. Overlaps: the window whose
        core holds a site wins ("core"), or every window covering it is averaged ("average")."""
        plan, model = self.store.plan, self.model
        was_training = model is not None and model.training
        if model is not None:
            model.eval()
        rag_mode = "none" if model is None else model.config.rag_mode
        builder = BatchBuilder(self.store, self.panel_alleles, queries, retrieval=self.retrieval, rag_mode=rag_mode,
                               clock=self.clock, device=self.device if self.workers == 0 else "cpu")
        total = np.zeros((plan.n_sites, len(queries)), dtype=np.float64)
        count = plan.coverage()[:, None] if self.stitch == "average" else np.ones((plan.n_sites, 1))
        items = inference_plan(plan, self.retrieval.segment, len(queries), self.batch_rows(queries),
                               self.retrieval.flank)
        bar = progress_bar() if show_progress else nullcontext()  # fit's validation runs inside fit's own bar
        clock = self.clock
        with bar:  # on the CPU the builder and the network take every core in turn (fit shares them: `cores_shared`)
            task = bar.add_task("impute", total=len(items)) if show_progress else None
            batches = Prefetcher(builder, ((0, w, ids) for w, ids in items), pin=self.device.type == "cuda",
                                 workers=self.workers, background=self.device.type != "cpu")
            for batch in batches:
                with clock.stage("network"):
                    if model is None:
                        p_alt = batch.copy_prob.numpy().T
                    else:
                        batch = batch.to(self.device)
                        logits = torch.cat([batch_logits(model, part) for part in batch.split(self.network_rows())])
                        logits = logits.float()  # P(ALT): softmax over (REF, ALT) as the sigmoid of their difference
                        p_alt = torch.sigmoid(logits[..., 1] - logits[..., 0]).cpu().numpy().T
                with clock.stage("stitching"):
                    span = plan.sites(batch.window)
                    keep = plan.core(batch.window) if self.stitch == "core" else span
                    total[keep, batch.query_ids] += p_alt[keep.start - span.start:keep.stop - span.start]
                if show_progress:
                    bar.advance(task)
            clock.add("waiting for batches", batches.wait_seconds)
        if model is not None:
            model.train(was_training)
        return (total / count).astype(np.float32)


def impute(target_vcf: str, store_url: str, model_path: str, out: str, device: str = "auto", batch_size: int = BATCH_SIZE,
           stitch: Stitch = "average", region: str | None = None, retrieval: str | None = None,
           workers: int = 0, seed: int = 1, join_multiallelic: bool = False) -> ImputeReport:
    """Phase and impute `target_vcf` against a store, or every contig of a genome folder (then `model_path` is
    `fit`'s run folder, RUN/CONTIG/best.pt a contig, or one checkpoint or `copying` for all) into one VCF."""
    started = time.perf_counter()
    check_output(out)  # before the work, not after it
    genome = contig_stores(store_url)
    if genome:
        return _impute_genome(target_vcf, genome, model_path, out, region, started, device=device,
                              batch_size=batch_size, stitch=stitch, retrieval=retrieval, workers=workers, seed=seed,
                              join_multiallelic=join_multiallelic)
    with output_lock(out):
        torch_device = resolve_device(device)
        store = open_store(store_url)
        clock = StageClock()
        imputer = Imputer.load(model_path, store, torch_device, backend=retrieval, batch_size=batch_size, stitch=stitch,
                               clock=clock, workers=workers)
        with clock.stage("read targets"):
            targets = load_targets(target_vcf, store, region=region)
        console.print(targets.summary())
        with clock.stage("phasing"):
            phased = phase_targets(targets, store, torch_device, seed=seed)
        if phased:
            console.print(f"phased {phased} samples' unphased heterozygous calls (copying model, seed {seed})")
        queries = external_queries(targets.alleles, targets.sample_ids, store.sample_ids)
        prob = imputer.probabilities(queries)
        with clock.stage("write VCF"):
            path = write_imputed_vcf(out, Sites.from_store(store, targets.contig_length), targets.sample_ids, prob,
                                     targets.typed, targets.alleles, source=f"ragsnv impute --model {model_path}",
                                     haploid=targets.ploidy_one(), join_multiallelic=join_multiallelic)
        return ImputeReport(path, len(targets.sample_ids), prob.shape[0], int(targets.typed.sum()),
                            time.perf_counter() - started, impute_stages(clock.seconds))


def _impute_genome(target_vcf: str, genome: dict[str, str], model_path: str, out: str, region: str | None,
                   started: float, **options) -> ImputeReport:
    """Every contig of the genome the target has records on (or --region's), one after the other, into `out`."""
    in_target = set(record_contigs(target_vcf)) or set(genome)  # a BCF's contigs are in its header: try each
    wanted = parse_region(region)[0] if region else None
    contigs = [contig for contig in genome if contig in in_target and wanted in (None, contig)]
    if not contigs:
        raise UserError(target_vcf, f"no records on the genome's contigs ({', '.join(genome)})"
                        + (f" in --region {region}" if region else ""),
                        "give a target of the same contigs (same naming, e.g. chr22 vs 22)")
    out = Path(out)
    parts = [out.with_name(f".{out.name.removesuffix('.vcf.gz')}.{contig}.part.vcf.gz") for contig in contigs]
    reports = []
    with output_lock(out):
        try:
            single = model_path == COPYING or Path(model_path).is_file()  # else fit's run folder, a model a contig
            for number, (contig, part) in enumerate(zip(contigs, parts), start=1):
                console.print(f"[bold]contig {contig}[/bold] ({number} of {len(contigs)})")
                model = model_path if single else str(Path(model_path) / contig / "best.pt")
                reports.append(impute(target_vcf, genome[contig], model, str(part), region=region or contig,
                                      **options))
            path = concatenate_vcfs(parts, out)
        finally:
            for part in parts:
                part.unlink(missing_ok=True)
                Path(f"{part}.tbi").unlink(missing_ok=True)
    stages = {name: sum(report.stages[name] for report in reports) for name in STAGES}
    return ImputeReport(path, reports[0].samples, sum(r.sites for r in reports), sum(r.typed_sites for r in reports),
                        time.perf_counter() - started, stages)


def impute_stages(seconds: dict[str, float]) -> dict[str, float]:
    """A clock's seconds as STAGES (0 for a stage that did not run, e.g. state selection when every haplotype
    is a state): the batch builder's total less the stages inside it is "batch assembly"."""
    inside = sum(seconds.get(name, 0.0) for name in ("state selection", "copying model", "store reads"))
    stages = {**seconds, "batch assembly": seconds.get("batches", 0.0) - inside}
    return {name: stages.get(name, 0.0) for name in STAGES}
