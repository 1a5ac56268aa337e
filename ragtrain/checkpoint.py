"""Checkpoints of `ragtrain fit`: what they hold, and the one loader that checks them against a store.

A checkpoint is a dict: model_config (architecture), retrieval (RetrievalSpec), model (state_dict),
optimizer, scheduler, rng and progress (training state), store_fingerprint (the encoder of the store it was
trained on), options (the runtime settings of the run), bert_config (so `ragprep encode --encoder` can
re-encode with its BERT). Written atomically; read with weights_only=True.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch

from ragprep.model import read_checkpoint
from ragtrain.model import ModelConfig
from ragtrain.retrieval import RetrievalSpec
from stores import EmbeddingStore
from stores.atomic import atomic_path
from stores.errors import UserError


@dataclass
class Checkpoint:
    path: Path
    model_config: ModelConfig
    retrieval: RetrievalSpec
    state: dict  # everything in the file


def load_checkpoint(path: str | Path, store: EmbeddingStore, option: str = "--model") -> Checkpoint:
    """Read a fit checkpoint and check it was trained on `store`'s encoder (the one fingerprint check)."""
    state = read_checkpoint(path, option, needs="model_config")
    if state.get("store_fingerprint") != store.meta.encoder_fingerprint:
        raise UserError(path, f"trained on a store with encoder {state.get('store_fingerprint')}, but {store.url} "
                        f"has {store.meta.encoder_fingerprint}", "use the store the model was trained on")
    return Checkpoint(Path(path), ModelConfig.from_dict(state["model_config"]),
                      RetrievalSpec.from_dict(state["retrieval"]), state)


def save_atomic(state: dict, path: Path) -> None:
    """Write `state` beside `path`, then rename over it (`stores.atomic`): a reader sees the old file or the
    new, never half. Serialised in memory first, so a full or read-only disk fails before anything is left."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getbuffer())
    except UserError as err:
        raise UserError(err.source, err.problem, f"{err.fix}, then continue with --resume") from None
