"""`ragtrain impute`: every panel site for every target haplotype, through fit's window plan, retrieval and model."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ragprep.encode import resolve_device
from ragprep.progress import console, progress_bar
from ragtrain.data import BatchBuilder, Prefetcher, QuerySet, external_queries, validation_plan
from ragtrain.model import ModelConfig, RagImputer, batch_logits
from ragtrain.targets import load_targets
from ragtrain.vcf_writer import Sites, write_imputed_vcf
from stores import EmbeddingStore, StoreError, open_store

Stitch = Literal["core", "average"]


@dataclass
class ImputeReport:
    path: Path
    samples: int
    sites: int
    typed_sites: int
    seconds: float

    @property
    def genotypes_per_s(self) -> float:
        return self.samples * self.sites / max(self.seconds, 1e-9)


def load_model(path: str | Path, store: EmbeddingStore, device: torch.device) -> RagImputer:
    """A trained imputer from a `ragtrain fit` checkpoint (weights_only), checked against the store."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model_config" not in ckpt:
        raise ValueError(f"{path}: not a ragtrain checkpoint; fix: pass OUT/best.pt or OUT/last.pt of `ragtrain fit`")
    if ckpt["store_fingerprint"] != store.meta.encoder_fingerprint:
        raise StoreError(f"{path}: trained on a store with encoder {ckpt['store_fingerprint']}, but {store.url} "
                         f"has {store.meta.encoder_fingerprint}; fix: impute with the store the model was trained on")
    model = RagImputer(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


@torch.no_grad()
def haplotype_probabilities(model: RagImputer, store: EmbeddingStore, queries: QuerySet, device: torch.device,
                            batch_size: int = 64, stitch: Stitch = "average", retrieval: str = "auto") -> np.ndarray:
    """P(ALT) float32 [sites, haplotypes]. Overlaps: the window whose core holds a site wins ("core"), or the
    probabilities of every window covering it are averaged ("average")."""
    panel_haps = store.haplotypes(0, int(store.positions.size))
    config = model.config
    builder = BatchBuilder(store, panel_haps, queries, None, 0, config.k, config.rag_mode, retrieval,
                           config.retrieval_flank, config.match_features)
    n_sites = panel_haps.shape[1]
    total = np.zeros((n_sites, len(queries)), dtype=np.float64)
    windows = store.windows
    count = np.ones((n_sites, 1))
    if stitch == "average":  # how many windows cover each site
        count = np.zeros((n_sites, 1))
        for start, length in zip(windows["window_start"], windows["window_length"]):
            count[start:start + length] += 1
    plan = validation_plan(store.n_windows, len(queries), batch_size)
    with progress_bar() as bar:
        task = bar.add_task("impute", total=len(plan))
        for batch in Prefetcher(builder, ((0, w, ids) for w, ids in plan), pin=device.type == "cuda"):
            batch = batch.to(device)
            p_alt = torch.softmax(batch_logits(model, batch).float(), dim=-1)[..., 1].cpu().numpy().T  # [L, B]
            start, length = int(windows["window_start"][batch.window]), int(windows["window_length"][batch.window])
            if stitch == "core":
                lo, hi = int(windows["window_core_start"][batch.window]), int(windows["window_core_end"][batch.window])
            else:
                lo, hi = start, start + length
            total[lo:hi, batch.query_ids] += p_alt[lo - start:hi - start]
            bar.advance(task)
    return (total / count).astype(np.float32)


def impute(target_vcf: str, store_url: str, model_path: str, out: str, device: str = "auto", batch_size: int = 64,
           stitch: Stitch = "average", region: str | None = None, retrieval: str = "auto") -> ImputeReport:
    started = time.perf_counter()
    torch_device = resolve_device(device)
    store = open_store(store_url)
    model = load_model(model_path, store, torch_device)
    targets = load_targets(target_vcf, store, region=region)
    console.print(targets.summary())
    queries = external_queries(targets.alleles, targets.sample_ids, store.sample_ids)
    prob = haplotype_probabilities(model, store, queries, torch_device, batch_size, stitch, retrieval)
    path = write_imputed_vcf(out, Sites.from_store(store, targets.contig_length), targets.sample_ids, prob, targets.typed, targets.alleles,
                             source=f"ragsnv impute --model {model_path}")
    return ImputeReport(path, len(targets.sample_ids), prob.shape[0], int(targets.typed.sum()),
                        time.perf_counter() - started)
