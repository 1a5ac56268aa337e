"""`ragtrain fit`: train the imputer over query haplotypes, with checkpoints that resume exactly."""

from __future__ import annotations

import csv
import math
import shutil
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import TextColumn

from ragprep.distributed import World, is_main_process
from ragprep.distributed import init as init_world
from ragprep.encode import resolve_device
from ragprep.model import Bert, BertConfig, build_bert, fingerprint, load_bert_checkpoint, save_bert
from ragprep.progress import console, progress_bar
from ragtrain.checkpoint import load_checkpoint, save_atomic
from ragtrain.data import (
    IGNORE,
    Batch,
    BatchBuilder,
    Prefetcher,
    QuerySet,
    cores_shared,
    epoch_plan,
    external_queries,
    panel_queries,
    split_samples,
)
from ragtrain.impute import BATCH_SIZE, Imputer
from ragtrain.masking import VALIDATION_EPOCH, MaskSpec, apply_mask, mask_for
from ragtrain.metrics import MAF_BINS, bin_label, dosage_r2, minor_allele_dose, summarise
from ragtrain.model import ModelConfig, RagImputer, batch_logits
from ragtrain.retrieval import RetrievalSpec
from stores import EmbeddingStore, open_store
from stores.errors import UserError
from stores.lock import output_lock


@dataclass
class FitOptions:
    """One fit. Architecture (`model_config`) and retrieval (`retrieval`) are fixed for a run's life; the
    runtime settings below them may change on `--resume`."""

    store: str
    out: str
    train: str | None = None  # a phased VCF of training queries (default: the panel, split by sample)
    # architecture (with the store's BERT: ModelConfig)
    rag_mode: str = "precomputed"
    fusion: str = "aligned"
    fusion_layers: tuple[int, ...] = (-1,)  # after these layers (-1 the last: the network's cost, docs/benchmarks.md); () every layer
    neighbour_alleles: bool = True
    adapter: bool = False
    confident: float = ModelConfig.confident
    # retrieval
    retrieval: RetrievalSpec = field(default_factory=RetrievalSpec)
    # what the run trains and validates on: a resumed run must keep these
    targets: str | None = None  # a target VCF: train and validate with its typed sites observed, all others hidden
    mask: str = "array:10:0.05"
    val_mask: str = "array:10:0.05"
    val_fraction: float = 0.1
    seed: int = 1
    # runtime
    epochs: int = 1
    max_steps: int | None = None
    stop_after: int | None = None  # stop this run (with a checkpoint) after so many steps; resume later
    batch_size: int = 32
    accumulate: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 20
    clip: float = 1.0
    eval_every: int = 100
    device: str = "auto"
    workers: int = 0  # batch-building processes (0: one thread beside the step)
    checkpointing: bool = False
    encoder: str | None = None
    resume: bool = False
    overwrite: bool = False

    SPLIT = ("train", "val_fraction", "seed")

    def __post_init__(self) -> None:
        for option, value in (("--lr", self.lr), ("--clip", self.clip)):
            if not value > 0:
                raise UserError(option, f"{value} is not a positive number", f"give {option} above 0, e.g. 1e-3")
        MaskSpec.parse(self.mask, option="--mask")
        MaskSpec.parse(self.val_mask, option="--val-mask")

    def model_config(self, bert: BertConfig) -> ModelConfig:
        return ModelConfig(bert=bert, rag_mode=self.rag_mode, fusion=self.fusion,  # type: ignore[arg-type]
                           fusion_layers=tuple(i + bert.n_layers if -bert.n_layers <= i < 0 else i
                                               for i in self.fusion_layers), neighbour_alleles=self.neighbour_alleles,
                           adapter=self.adapter, confident=self.confident)

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["retrieval"] = self.retrieval.to_dict()
        data["fusion_layers"] = list(self.fusion_layers)
        return data


@dataclass
class FitResult:
    steps: int
    best_r2: float
    last_metrics: dict = field(default_factory=dict)
    steps_per_s: float = 0.0
    data_wait: float = 0.0


def query_encoder(store: EmbeddingStore, encoder: str | None) -> Bert:
    """The BERT the store was encoded with; the query model starts from it. Refuses a mismatch."""
    meta = store.meta
    if encoder:
        bert = load_bert_checkpoint(encoder)
    elif meta.encoder_source.startswith("seed:"):
        bert = build_bert(BertConfig.from_dict(meta.encoder_config), int(meta.encoder_source.split(":")[1]))
    elif Path(meta.encoder_source).exists():
        bert = load_bert_checkpoint(meta.encoder_source)
    else:
        raise UserError(store.url, f"encoded with {meta.encoder_source}, which is not here",
                        "pass --encoder CHECKPOINT (the one the store was encoded with)")
    found = fingerprint(bert)
    if found != meta.encoder_fingerprint or bert.config.d_memory != store.d_memory:
        raise UserError(
            store.url, f"encoder fingerprint {meta.encoder_fingerprint} (d_model {meta.d_model}, d_memory "
            f"{meta.d_memory}) does not match the model's {found} (d_model {bert.config.d_model}, d_memory "
            f"{bert.config.d_memory})",
            "re-encode with `ragprep encode --encoder CKPT --overwrite`, or pass the encoder the store was made with")
    return bert


def load_queries(store: EmbeddingStore, panel_alleles: np.ndarray, options: FitOptions) -> tuple[QuerySet, QuerySet]:
    """(train, validation) queries: the panel split by sample, or the --train samples less any validation sample
    (validation always comes from the panel)."""
    n_samples = panel_alleles.shape[0] // 2
    train_samples, val_samples = split_samples(n_samples, options.val_fraction, options.seed)
    validation = panel_queries(panel_alleles, val_samples)
    if options.train is None:
        return panel_queries(panel_alleles, train_samples), validation
    from ragtrain.phasing import phase_targets
    from ragtrain.targets import load_targets

    targets = load_targets(options.train, store)
    if phase_targets(targets, store, torch.device("cpu"), seed=options.seed):
        console.print(f"phased the unphased heterozygous calls of {options.train}")
    keep = ~np.isin(targets.sample_ids, store.sample_ids[val_samples])
    console.print(f"{targets.summary()}; {int((~keep).sum())} samples left out (validation samples of the panel)")
    if not keep.any():
        raise UserError(options.train, "every sample is a validation sample of the panel",
                        "give training samples that are not held out, or change --seed / --val-fraction")
    haplotypes = np.repeat(keep, 2)
    train = external_queries(targets.alleles[:, haplotypes], targets.sample_ids[keep], store.sample_ids,
                             key_offset=n_samples)
    return train, validation


def hide_for_validation(queries: QuerySet, spec: MaskSpec, seed: int, af: np.ndarray,
                        typed: np.ndarray | None = None) -> tuple[QuerySet, np.ndarray]:
    """Validation queries as impute sees targets: one mask a sample over the whole panel (an array types the same
    sites everywhere; with `typed`, the target's own sites), fixed across evaluations. Returns the masked queries
    and bool [Q, sites] hidden."""
    if typed is not None:
        hidden = np.repeat(~typed[None], len(queries), axis=0)
    else:
        masks = {int(k): mask_for(spec, seed, VALIDATION_EPOCH, int(k), -1, af) for k in np.unique(queries.sample_key)}
        hidden = np.stack([masks[int(k)] for k in queries.sample_key]) if len(queries) else np.zeros((0, af.size), bool)
    return QuerySet(apply_mask(queries.alleles, hidden), queries.sample_key, queries.exclude), hidden


def _typed_sites(path: str, store: EmbeddingStore) -> np.ndarray:
    """bool [sites]: the panel sites the target file types."""
    from ragtrain.targets import load_targets

    targets = load_targets(path, store)
    console.print(f"--targets: {targets.summary()}")
    return targets.typed


def lr_lambda(warmup: int, total: int):
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def masked_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over scored (masked) sites: one softmax, inside the loss. Zero (not NaN) with none."""
    if not (labels != IGNORE).any():
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits.float().reshape(-1, 2), labels.reshape(-1), ignore_index=IGNORE)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Batch],
               device: torch.device, clip: float, world: World | None = None) -> float:
    """One optimizer step over host batches (more than one: gradient accumulation); the mean loss. The step
    `ragtrain fit` takes and `ragtrain bench` times.

    Under torchrun (`model` wrapped in DistributedDataParallel, each rank holding its share of the global batch)
    every rank's summed loss is divided by the global count of scored sites (times the world size, which DDP's
    gradient averaging divides out): the gradient of the global batch's mean loss, as one process would take it.
    """
    batches = list(batches)
    losses = []
    for batch in batches:
        batch = batch.to(device)
        logits = batch_logits(model, batch)
        if world is None or not world.distributed:
            loss = masked_loss(logits, batch.labels)
            reported = float(loss.detach())
        else:
            count = world.sum((batch.labels != IGNORE).sum().to(torch.float32)).clamp(min=1)
            total = F.cross_entropy(logits.float().reshape(-1, 2), batch.labels.reshape(-1), ignore_index=IGNORE,
                                    reduction="sum")
            loss = total * world.size / count
            reported = float(world.sum(total.detach().clone()) / count)
        (loss / len(batches)).backward()
        losses.append(reported)
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(np.mean(losses))


class Trainer:
    """Owns model, optimiser, schedule and data for one fit; `run` trains, evaluates and checkpoints."""

    def __init__(self, options: FitOptions) -> None:
        self.options = options
        self.world = init_world(options.device)
        self.device = resolve_device(options.device)
        if self.world.distributed and self.device.type == "cuda":
            self.device = torch.device("cuda", self.world.local_rank)
        self.store = open_store(options.store)
        self.out = Path(options.out)
        bert = query_encoder(self.store, options.encoder)
        self.config, self.retrieval = options.model_config(bert.config), options.retrieval
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed)
            self.model = RagImputer(self.config, self.retrieval)
        self.model.bert.load_state_dict(bert.state_dict())
        self.model.bert.gradient_checkpointing = options.checkpointing
        # the projection to the memory dim makes memory only online; frozen otherwise (DDP wants every
        # trainable parameter used)
        self.model.bert.memory_proj.requires_grad_(self.config.rag_mode == "online")
        self.model.to(self.device)
        self.trained: torch.nn.Module = self.model  # what the step runs: under torchrun, the DDP wrapper
        if self.world.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # a rank whose queries the copying model is sure of everywhere runs no network (RagImputer.prunes)
            self.trained = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=self.model.prunes)
        self.panel_alleles = self.store.alleles()
        self.train_queries, val_queries = load_queries(self.store, self.panel_alleles, options)
        self.mask = MaskSpec.parse(options.mask)
        self.typed = None if options.targets is None else _typed_sites(options.targets, self.store)
        self.val_truth = val_queries.alleles
        self.val_queries, self.val_hidden = hide_for_validation(val_queries, MaskSpec.parse(options.val_mask),
                                                                options.seed, self.store.af, self.typed)
        self.imputer = Imputer(self.model, self.retrieval, self.store, self.device,
                               batch_size=max(options.batch_size, BATCH_SIZE), panel_alleles=self.panel_alleles,
                               workers=options.workers)  # validation: impute's block of queries a copying pass
        self.batches_per_epoch = len(self.epoch_items(0))
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / options.accumulate)
        self.total_steps = options.max_steps or options.epochs * self.steps_per_epoch
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(options.warmup, self.total_steps))
        self.step, self.epoch, self.batch_in_epoch, self.best_r2 = 0, 0, 0, -math.inf
        if self.world.is_main:  # every input checked: now an earlier run may be replaced, and the folder made
            _check_out(self.out, options)
            self.out.mkdir(parents=True, exist_ok=True)
        self.world.barrier()
        if options.resume:
            self.load(self.out / "last.pt")

    # --- checkpoints ------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "bert_config": self.config.bert.to_dict(),
            "model_config": self.config.to_dict(),
            "retrieval": self.retrieval.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "progress": {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                         "best_r2": self.best_r2},
            "store_fingerprint": self.store.meta.encoder_fingerprint,
            "options": self.options.to_dict(),
        }

    @property
    def global_batch(self) -> int:
        """Query haplotypes a step takes from one window: the batch of every rank together."""
        return self.options.batch_size * self.world.size

    def save(self, name: str) -> Path:
        """Rank 0 writes; the others wait for it."""
        path = self.out / name
        if self.world.is_main:
            save_atomic(self.state(), path)
        self.world.barrier()
        return path

    def load(self, path: Path) -> None:
        """Continue from `path`: the same architecture, retrieval, split and masks; runtime settings may change."""
        if not path.exists():
            raise UserError(path, "no checkpoint to resume", "run without --resume first")
        ckpt = load_checkpoint(path, self.store, option="--resume")
        saved = ckpt.state.get("options", {})
        changed = ckpt.model_config.differences(self.config) + ckpt.retrieval.differences(self.retrieval)
        changed += [f"{name} {saved.get(name)} vs {getattr(self.options, name)}"
                    for name in (*FitOptions.SPLIT, "targets", "mask", "val_mask") if saved.get(name) != getattr(self.options, name)]
        if changed:
            raise UserError(path, f"trained with other settings ({'; '.join(changed)}: checkpoint vs this command)",
                            "resume with the run's settings, or start a new run in another --out")
        self.model.load_state_dict(ckpt.state["model"])
        self.optimizer.load_state_dict(ckpt.state["optimizer"])
        self.scheduler.load_state_dict(ckpt.state["scheduler"])
        self.scheduler.base_lrs = [self.options.lr for _ in self.scheduler.base_lrs]  # this command's runtime
        for group in self.optimizer.param_groups:  # settings win over the saved ones
            group["weight_decay"] = self.options.weight_decay
        torch.set_rng_state(ckpt.state["rng"]["torch"])
        if ckpt.state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt.state["rng"]["cuda"])
        progress = ckpt.state["progress"]
        self.step, self.epoch = progress["step"], progress["epoch"]
        self.batch_in_epoch, self.best_r2 = progress["batch_in_epoch"], progress["best_r2"]

    # --- training ---------------------------------------------------------------------------------------
    def builder(self) -> BatchBuilder:
        return BatchBuilder(self.store, self.panel_alleles, self.train_queries, retrieval=self.retrieval,
                            rag_mode=self.config.rag_mode, mask=self.mask, seed=self.options.seed, typed=self.typed,
                            device=self.device if self.options.workers == 0 else "cpu")

    def epoch_items(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """(window, query ids) of every global batch of `epoch`."""
        return epoch_plan(self.store.plan, self.retrieval.segment, len(self.train_queries), self.global_batch,
                          self.options.seed, epoch, self.retrieval.flank)

    def train_items(self):
        """(epoch, window, query ids, scored) of this rank from the current position on, epoch after epoch: each
        global batch (one window) is split between the ranks; a rank left without a query takes the first one
        unscored, so that every rank steps together."""
        epoch, skip = self.epoch, self.batch_in_epoch
        while True:
            for window, ids in self.epoch_items(epoch)[skip:]:
                share = np.array_split(ids, self.world.size)[self.world.rank]
                yield (epoch, window, share, True) if share.size else (epoch, window, ids[:1], False)
            epoch, skip = epoch + 1, 0

    def run(self) -> FitResult:
        o = self.options
        stop_at = self.total_steps if o.stop_after is None else min(self.total_steps, self.step + o.stop_after)
        prefetch = Prefetcher(self.builder(), self.train_items(), pin=self.device.type == "cuda", workers=o.workers)
        metrics: dict = {}
        started, start_step, eval_seconds = time.perf_counter(), self.step, 0.0
        losses: list[float] = []
        columns = TextColumn("loss {task.fields[loss]:.4f} | {task.fields[rate]:.2f} steps/s | wait {task.fields[wait]:.0%}")
        self.model.train()
        try:
            with progress_bar(columns, disable=not self.world.is_main) as bar, cores_shared(self.device):
                task = bar.add_task(f"fit {self.config.rag_mode}", total=self.total_steps, completed=self.step,
                                    loss=0.0, rate=0.0, wait=0.0)
                batches = iter(prefetch)
                while self.step < stop_at:
                    micro = []
                    for _ in range(o.accumulate):
                        micro.append(next(batches))
                        self.batch_in_epoch += 1
                        if self.batch_in_epoch == self.batches_per_epoch:
                            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    losses.append(train_step(self.trained, self.optimizer, micro, self.device, o.clip, self.world))
                    self.scheduler.step()
                    self.step += 1
                    training = time.perf_counter() - started - eval_seconds  # validation excluded
                    bar.update(task, completed=self.step, loss=float(np.mean(losses[-20:])),
                               rate=(self.step - start_step) / training, wait=prefetch.wait_seconds / training)
                    if self.step % o.eval_every == 0 or self.step == stop_at:
                        eval_started = time.perf_counter()
                        metrics = self.evaluate_and_checkpoint(float(np.mean(losses[-o.eval_every:])),
                                                               prefetch.wait_seconds / training)
                        eval_seconds += time.perf_counter() - eval_started
                        self.model.train()
        finally:
            prefetch.close()
        training = max(time.perf_counter() - started - eval_seconds, 1e-9)
        return FitResult(self.step, self.best_r2, metrics, (self.step - start_step) / training,
                         prefetch.wait_seconds / training)

    def evaluate_and_checkpoint(self, train_loss: float, data_wait: float) -> dict:
        """Validate, log, and write last.pt; best.pt when validation r2 is the best so far (without validation
        samples, best.pt is the latest checkpoint)."""
        metrics = self.validate()
        metrics.update(step=self.step, epoch=self.epoch, train_loss=train_loss, data_wait=data_wait,
                       lr=self.scheduler.get_last_lr()[0])
        self.log(metrics)
        r2 = metrics.get("r2_all", math.nan)
        better = r2 > self.best_r2  # False for NaN
        self.best_r2 = r2 if better else self.best_r2
        if better or len(self.val_queries) == 0 or not (self.out / "best.pt").exists():
            self.save("best.pt")
        self.save("last.pt")
        return metrics

    def validate(self) -> dict:
        """Loss, accuracy, and dosage r2 by MAF bin at the validation samples' hidden sites, from the stitched
        probabilities `ragtrain impute` would write. Empty without validation samples."""
        if len(self.val_queries) == 0:
            return {}
        samples = np.array_split(np.arange(len(self.val_queries) // 2), self.world.size)[self.world.rank]
        mine = np.stack([2 * samples, 2 * samples + 1], axis=1).reshape(-1)  # whole samples, in order
        shares = self.world.gather(self.imputer.probabilities(self.val_queries.take(mine), show_progress=False))
        prob = np.concatenate(shares, axis=1).T  # [Q, sites]: every validation haplotype once
        truth = self.val_truth
        scored = self.val_hidden & (truth >= 0)
        p_true = np.clip(np.where(truth == 1, prob, 1 - prob)[scored], 1e-7, 1.0)
        hap_dose = np.where(scored, prob, np.nan)
        dosage = hap_dose[0::2] + hap_dose[1::2]  # a sample's haplotypes are adjacent and share its mask
        counts = np.where(scored[0::2] & scored[1::2], truth[0::2] + truth[1::2], -1).astype(np.float32)
        af = self.store.af
        table = summarise(dosage.T, counts.T, np.minimum(af, 1 - af), af=af)
        r2_all = dosage_r2(*minor_allele_dose(dosage.T, counts.T, af))
        metrics = {"val_loss": float(-np.log(p_true).mean()) if p_true.size else math.nan,
                   "val_accuracy": float((p_true > 0.5).mean()) if p_true.size else math.nan, "r2_all": r2_all}
        for row in table:
            metrics[f"r2 {row['bin']}"] = row["r2"]
        nonref = sum(row["n_nonref"] for row in table)
        agree = sum(row["nonref_concordance"] * row["n_nonref"] for row in table if row["n_nonref"])
        metrics["nonref_concordance"] = agree / nonref if nonref else math.nan
        return metrics

    def log(self, metrics: dict) -> None:
        if not self.world.is_main:
            return
        path = self.out / "metrics.csv"
        keys = ["step", "epoch", "train_loss", "val_loss", "val_accuracy", "r2_all",
                *[f"r2 {bin_label(i)}" for i in range(len(MAF_BINS))], "nonref_concordance", "lr", "data_wait"]
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(metrics)
        if self._tensorboard is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self._tensorboard.add_scalar(key.replace(" ", "_"), value, self.step)

    @property
    def _tensorboard(self):
        if not hasattr(self, "_tb"):
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tensorboard"))
            except ImportError:  # tensorboard not installed: CSV only
                self._tb = None
        return self._tb


def _check_out(out: Path, options: FitOptions) -> None:
    """A run folder holding an earlier run is continued (--resume) or replaced (--overwrite), never mixed."""
    if out.exists() and not out.is_dir():
        raise UserError(out, "is a file, not a run folder", "pass --out a folder (new or empty)")
    earlier = out.is_dir() and any(out.iterdir())
    if options.resume:
        return
    if earlier and not options.overwrite:
        raise UserError(out, "holds an earlier run", "pass --resume to continue it, --overwrite to replace it, "
                        "or another --out")
    if earlier:
        for name in ("last.pt", "best.pt", "metrics.csv"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "tensorboard", ignore_errors=True)


def one_writer(options: FitOptions) -> AbstractContextManager:
    """The run folder's lock (on the main process only: under torchrun the others write nothing there)."""
    return output_lock(options.out) if is_main_process() else nullcontext()


def fit(options: FitOptions) -> FitResult:
    with one_writer(options):
        return Trainer(options).run()


def pretrain(options: FitOptions) -> tuple[FitResult, Path]:
    """Masked-allele training of the BERT alone over the panel's haplotypes (no retrieval, no copying model);
    writes OUT/encoder.pt for `ragprep encode --encoder` (a store whose memory comes from a trained encoder)."""
    alone = replace(options, rag_mode="none", retrieval=replace(options.retrieval, selection="hamming",
                                                                 match_features=False))
    with one_writer(options):
        trainer = Trainer(alone)
        result = trainer.run()
        path = Path(options.out) / "encoder.pt"
        save_bert(trainer.model.bert, path)
    return result, path
