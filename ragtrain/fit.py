"""`ragtrain fit`: train the imputer over query haplotypes, with checkpoints that resume exactly."""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import TextColumn

from ragprep.encode import resolve_device
from ragprep.model import Bert, BertConfig, build_bert, fingerprint, load_bert_checkpoint
from ragprep.progress import console, progress_bar
from ragtrain.data import (
    IGNORE,
    BatchBuilder,
    Prefetcher,
    QuerySet,
    epoch_plan,
    external_queries,
    panel_queries,
    split_samples,
    validation_plan,
)
from ragtrain.masking import VALIDATION_EPOCH, MaskSpec
from ragtrain.metrics import MAF_BINS, bin_label, dosage_r2, minor_allele_dose, summarise
from ragtrain.model import ModelConfig, RagImputer, batch_logits
from stores import EmbeddingStore, StoreError, open_store


@dataclass
class FitOptions:
    store: str
    out: str
    train_vcf: str | None = None
    rag_mode: str = "precomputed"
    k: int = 8
    retrieval_flank: int = 2048
    match_features: bool = True
    fusion: str = "aligned"
    fusion_layers: tuple[int, ...] = ()
    neighbour_alleles: bool = True
    adapter: bool = False
    mask: str = "random:0.3-0.8"
    val_mask: str = "array:8:0.05"
    val_fraction: float = 0.1
    seed: int = 1
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
    checkpointing: bool = False
    encoder: str | None = None
    retrieval: str = "auto"
    resume: bool = False


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
        raise StoreError(f"{store.url}: encoded with {meta.encoder_source}, which is not here; "
                         "fix: pass --encoder CHECKPOINT (the one the store was encoded with)")
    found = fingerprint(bert)
    if found != meta.encoder_fingerprint or bert.config.d_memory != store.d_memory:
        raise StoreError(
            f"{store.url}: encoder fingerprint {meta.encoder_fingerprint} (d_model {meta.d_model}, d_memory "
            f"{meta.d_memory}) does not match the model's {found} (d_model {bert.config.d_model}, d_memory "
            f"{bert.config.d_memory}); fix: re-encode with `ragprep encode --encoder CKPT --overwrite`, "
            "or pass the encoder the store was made with"
        )
    return bert


def load_queries(store: EmbeddingStore, panel_haps: np.ndarray, options: FitOptions) -> tuple[QuerySet, QuerySet]:
    """(train, validation) queries: the panel split by sample, or --train samples (validation from the panel)."""
    n_samples = panel_haps.shape[0] // 2
    train_samples, val_samples = split_samples(n_samples, options.val_fraction, options.seed)
    if options.train_vcf is None:
        return panel_queries(panel_haps, train_samples), panel_queries(panel_haps, val_samples)
    from ragtrain.targets import load_targets

    targets = load_targets(options.train_vcf, store)
    console.print(targets.summary())
    train = external_queries(targets.alleles, targets.sample_ids, store.sample_ids, key_offset=n_samples)
    return train, panel_queries(panel_haps, val_samples)


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


class Trainer:
    """Owns model, optimiser, schedule and data for one fit; `run` trains, evaluates and checkpoints."""

    def __init__(self, options: FitOptions) -> None:
        self.options = options
        self.device = resolve_device(options.device)
        self.store = open_store(options.store)
        bert = query_encoder(self.store, options.encoder)
        self.config = ModelConfig(bert=bert.config, rag_mode=options.rag_mode, k=options.k,
                                  retrieval_flank=options.retrieval_flank, match_features=options.match_features,
                                  fusion=options.fusion,
                                  fusion_layers=tuple(options.fusion_layers),
                                  neighbour_alleles=options.neighbour_alleles, adapter=options.adapter,
                                  checkpointing=options.checkpointing)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed)
            self.model = RagImputer(self.config)
        self.model.bert.load_state_dict(bert.state_dict())
        self.model.to(self.device)
        self.panel_haps = self.store.haplotypes(0, int(self.store.positions.size))
        self.train_queries, self.val_queries = load_queries(self.store, self.panel_haps, options)
        self.mask = MaskSpec.parse(options.mask)
        self.val_mask = MaskSpec.parse(options.val_mask)
        self.batches_per_epoch = len(epoch_plan(self.store.n_windows, len(self.train_queries), options.batch_size,
                                                options.seed, 0))
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / options.accumulate)
        self.total_steps = options.max_steps or options.epochs * self.steps_per_epoch
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(options.warmup, self.total_steps))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=False)  # bf16 needs no loss scaling
        self.step, self.epoch, self.batch_in_epoch, self.best_r2 = 0, 0, 0, -math.inf
        self.out = Path(options.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if options.resume:
            self.load(self.out / "last.pt")

    # --- checkpoints ------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "bert_config": self.config.bert.to_dict(),
            "model_config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "progress": {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                         "best_r2": self.best_r2},
            "store_fingerprint": self.store.meta.encoder_fingerprint,
            "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.options).items()},
        }

    def save(self, name: str) -> Path:
        """Atomic: write a temporary file beside the target, then rename over it."""
        path = self.out / name
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        torch.save(self.state(), tmp)
        os.replace(tmp, path)
        return path

    def load(self, path: Path) -> None:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no checkpoint to resume; fix: run without --resume first")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if ckpt["store_fingerprint"] != self.store.meta.encoder_fingerprint:
            raise StoreError(f"{path}: trained on a store with encoder {ckpt['store_fingerprint']}, but "
                             f"{self.store.url} has {self.store.meta.encoder_fingerprint}; fix: resume with its store")
        if ModelConfig.from_dict(ckpt["model_config"]) != self.config:
            raise ValueError(f"{path}: model settings differ from this command's; fix: resume with the same options")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if ckpt["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        progress = ckpt["progress"]
        self.step, self.epoch = progress["step"], progress["epoch"]
        self.batch_in_epoch, self.best_r2 = progress["batch_in_epoch"], progress["best_r2"]

    # --- training ---------------------------------------------------------------------------------------
    def builder(self, queries: QuerySet, mask: MaskSpec) -> BatchBuilder:
        return BatchBuilder(self.store, self.panel_haps, queries, mask, self.options.seed, self.options.k,
                            self.options.rag_mode, self.options.retrieval, self.options.retrieval_flank,
                            self.options.match_features)

    def train_items(self):
        """(epoch, window, query ids) from the current position on, epoch after epoch."""
        epoch, skip = self.epoch, self.batch_in_epoch
        while True:
            plan = epoch_plan(self.store.n_windows, len(self.train_queries), self.options.batch_size,
                              self.options.seed, epoch)
            for window, ids in plan[skip:]:
                yield epoch, window, ids
            epoch, skip = epoch + 1, 0

    def run(self) -> FitResult:
        o = self.options
        stop_at = self.total_steps if o.stop_after is None else min(self.total_steps, self.step + o.stop_after)
        prefetch = Prefetcher(self.builder(self.train_queries, self.mask), self.train_items(),
                              pin=self.device.type == "cuda")
        metrics: dict = {}
        started, start_step, eval_seconds = time.perf_counter(), self.step, 0.0
        losses: list[float] = []
        columns = TextColumn("loss {task.fields[loss]:.4f} | {task.fields[rate]:.2f} steps/s | wait {task.fields[wait]:.0%}")
        self.model.train()
        try:
            with progress_bar(columns) as bar:
                task = bar.add_task(f"fit {o.rag_mode}", total=self.total_steps, completed=self.step, loss=0.0,
                                    rate=0.0, wait=0.0)
                batches = iter(prefetch)
                while self.step < stop_at:
                    for _ in range(o.accumulate):
                        batch = next(batches).to(self.device)
                        loss = masked_loss(batch_logits(self.model, batch), batch.labels)
                        (loss / o.accumulate).backward()
                        losses.append(float(loss.detach()))
                        self.batch_in_epoch += 1
                        if self.batch_in_epoch == self.batches_per_epoch:
                            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.clip)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
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
        metrics = self.validate()
        metrics.update(step=self.step, epoch=self.epoch, train_loss=train_loss, data_wait=data_wait,
                       lr=self.scheduler.get_last_lr()[0])
        self.log(metrics)
        if metrics["r2_all"] > self.best_r2 or not (self.out / "best.pt").exists():
            self.best_r2 = max(self.best_r2, metrics["r2_all"])
            self.save("best.pt")
        self.save("last.pt")
        return metrics

    @torch.no_grad()
    def validate(self) -> dict:
        """Masked-site accuracy, loss, and dosage r2 by MAF bin on the validation samples, fixed mask."""
        self.model.eval()
        queries = self.val_queries
        builder = self.builder(queries, self.val_mask)
        n_sites = self.panel_haps.shape[1]
        prob = np.full((len(queries), n_sites), np.nan, dtype=np.float32)
        core_start, core_end = self.store.windows["window_core_start"], self.store.windows["window_core_end"]
        losses, correct, scored = [], 0, 0
        items = ((VALIDATION_EPOCH, w, ids) for w, ids in validation_plan(self.store.n_windows, len(queries),
                                                                         self.options.batch_size))
        for batch in Prefetcher(builder, items):
            batch = batch.to(self.device)
            logits = batch_logits(self.model, batch).float()
            scored_mask = batch.labels != IGNORE
            losses.append(float(masked_loss(logits, batch.labels)) * int(scored_mask.sum()))
            correct += int(((logits.argmax(-1) == batch.labels) & scored_mask).sum())
            scored += int(scored_mask.sum())
            p_alt = torch.softmax(logits, -1)[..., 1].cpu().numpy()
            start, lo, hi = int(builder.starts[batch.window]), int(core_start[batch.window]), int(core_end[batch.window])
            hidden = scored_mask.cpu().numpy()[:, lo - start:hi - start]
            block = prob[batch.query_ids, lo:hi]
            block[hidden] = p_alt[:, lo - start:hi - start][hidden]
            prob[batch.query_ids, lo:hi] = block
        dosage = prob[0::2] + prob[1::2]  # haplotypes of a sample are adjacent; both share the sample's mask
        truth = (queries.alleles[0::2] + queries.alleles[1::2]).astype(np.float32)
        af = self.store.af
        table = summarise(dosage.T, truth.T, np.minimum(af, 1 - af), af=af)
        r2_all = dosage_r2(*minor_allele_dose(dosage.T, truth.T, af))
        metrics = {"val_loss": sum(losses) / max(scored, 1), "val_accuracy": correct / max(scored, 1),
                   "r2_all": r2_all if not math.isnan(r2_all) else 0.0}
        for row in table:
            metrics[f"r2 {row['bin']}"] = row["r2"]
        nonref = sum(row["n_nonref"] for row in table)
        agree = sum(row["nonref_concordance"] * row["n_nonref"] for row in table if row["n_nonref"])
        metrics["nonref_concordance"] = agree / nonref if nonref else float("nan")
        return metrics

    def log(self, metrics: dict) -> None:
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


def fit(options: FitOptions) -> FitResult:
    return Trainer(options).run()
