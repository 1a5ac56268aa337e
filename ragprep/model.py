"""The project's one BERT over haplotype windows: frozen in `ragprep encode`, trainable in `ragtrain fit`.

Tokens are alleles (REF, ALT, MASK, PAD); each site adds a position-in-window embedding and an embedding of
its ALT allele frequency. Pre-LN blocks, attention through scaled_dot_product_attention with a padding mask
(flash / memory-efficient kernels: memory linear in the window length), GELU FFN. `memory_proj` maps hidden
states to the memory dim stored for retrieval. Windows come whole ([B, L]) or as some sites of several rows
packed one after another ([T], `Packed`): only self-attention sees the rows, every other layer is per token.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from stores.errors import UserError

REF, ALT, MASK, PAD = 0, 1, 2, 3
VOCAB = 4


@dataclass(frozen=True)
class BertConfig:
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    window: int = 256  # sites a window: size of the position table
    d_memory: int = 32  # dim of the stored memory, <= d_model
    ffn_mult: int = 2  # 2, not 4, at 64 dims: a cheaper network, the same r² (docs/accuracy.md, session 12)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise UserError("--heads", f"d_model {self.d_model} is not a multiple of {self.n_heads} heads",
                            "choose --heads that divides --d-model")
        if not 1 <= self.d_memory <= self.d_model:
            raise UserError("--d-memory", f"{self.d_memory} is outside 1..d_model ({self.d_model})",
                            f"give a memory dim between 1 and {self.d_model}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BertConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


PRESETS: dict[str, BertConfig] = {
    "demo": BertConfig(),
    "research": BertConfig(d_model=192, n_layers=10, n_heads=6, window=1030, d_memory=192, ffn_mult=4),
}


class SiteEmbedding(nn.Module):
    """Allele token + position in the window + ALT allele frequency, summed."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.token = nn.Embedding(VOCAB, config.d_model)
        self.position = nn.Embedding(config.window, config.d_model)
        self.af = nn.Linear(2, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, tokens: torch.Tensor, af: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """positions [B, L] (or [T] packed): each token's place in its window (default 0..L-1: the whole window
        in order)."""
        if positions is None:
            positions = torch.arange(tokens.shape[-1], device=tokens.device)
        af_features = torch.stack([af, torch.sqrt(af * (1 - af))], dim=-1).to(self.af.weight.dtype)
        return self.dropout(self.token(tokens) + self.position(positions) + self.af(af_features))


@dataclass(frozen=True)
class Packed:
    """The layout of T tokens from several rows stored one after another ([T, ...], no padding): per-token
    layers see them as they are; self-attention pads each row again, rows of one width together: `rows` holds
    one int64 [R, W] tensor per width, the token indices of each row, T where the row is shorter than W.
    `queries`, one int64 [R, W] tensor per width: where the last block attends from some tokens alone (its
    `outputs`, O of them), each row's among them (indices into the O, O where the row has fewer than W)."""

    rows: tuple[torch.Tensor, ...]
    queries: tuple[torch.Tensor, ...]


def attention_mask(valid: torch.Tensor | None) -> torch.Tensor | None:
    """bool [B, Lk] (True = real site) -> SDPA mask [B, 1, 1, Lk]; None when nothing is padded."""
    if valid is None or bool(valid.all()):
        return None
    return valid[:, None, None, :]


class Attention(nn.Module):
    """Multi-head attention through SDPA. Self-attention when `memory` is None, else cross-attention."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, d_kv: int | None = None) -> None:
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_kv or d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | Packed | None, memory: torch.Tensor | None = None,
                queries: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, D] with an SDPA mask (or None), or packed tokens x [T, D] with their `Packed` rows, then
        attending from every token, or from the `queries` [O] among them alone (output [O, D])."""
        if isinstance(mask, Packed):
            return self.out(self._packed(x, mask, queries))
        source = x if memory is None else memory
        q = self._heads(self.q(x))
        k, v = (self._heads(t) for t in self.kv(source).chunk(2, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).flatten(2))

    def _packed(self, x: torch.Tensor, packed: Packed, queries: torch.Tensor | None) -> torch.Tensor:
        """Self-attention within each row of packed tokens: keys and values of every token, queries of every
        token or of `queries` alone (`Packed.queries` place them), then each width's rows padded (keys always
        masked: a row's sums do not depend on its neighbours in the group) and the rows' outputs put back."""
        n_tokens, d_model = x.shape
        if queries is None:  # one product for queries, keys and values
            weight, bias = torch.cat([self.q.weight, self.kv.weight]), torch.cat([self.q.bias, self.kv.bias])
            q_kv = padded(F.linear(x, weight, bias))
            q, kv, places = q_kv[:, :d_model], q_kv[:, d_model:], packed.rows
        else:
            q, kv, places = padded(self.q(x[queries])), padded(self.kv(x)), packed.queries
        n_queries = q.shape[0] - 1
        y = x.new_zeros((n_queries + 1, d_model))
        dropout = self.dropout if self.training else 0.0
        for index, place in zip(packed.rows, places, strict=True):
            k, v = (self._heads(t) for t in kv[index].chunk(2, dim=-1))
            mask = (index < n_tokens)[:, None, None, :]
            rows = F.scaled_dot_product_attention(self._heads(q[place]), k, v, attn_mask=mask, dropout_p=dropout)
            y = y.index_put((place,), rows.transpose(1, 2).flatten(2))  # padding writes the last row, dropped below
        return y[:n_queries]

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)


def padded(t: torch.Tensor) -> torch.Tensor:
    """t [T, C] with a row of zeros after it (row T: what padded places read)."""
    return torch.cat([t, t.new_zeros((1, t.shape[1]))])


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, mult: int, dropout: float) -> None:
        super().__init__(nn.Linear(d_model, mult * d_model), nn.GELU(), nn.Linear(mult * d_model, d_model),
                         nn.Dropout(dropout))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + ffn(ln(x))."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.d_model)
        self.attn = Attention(config.d_model, config.n_heads, config.dropout)
        self.ln_ffn = nn.LayerNorm(config.d_model)
        self.ffn = FeedForward(config.d_model, config.ffn_mult, config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | Packed | None,
                outputs: torch.Tensor | None = None) -> torch.Tensor:
        """`outputs` (packed tokens, `Packed.queries` set): the tokens whose states are returned; attention
        attends from those alone, and the feed-forward runs on them alone."""
        if outputs is None:
            x = x + self.attn(self.ln_attn(x), mask)
        else:
            x = x[outputs] + self.attn(self.ln_attn(x), mask, queries=outputs)
        return x + self.ffn(self.ln_ffn(x))


AfterBlock = Callable[[int, torch.Tensor], torch.Tensor]
"""after_block(layer index, hidden [B, L, D]) -> hidden: how the fused model joins the one forward pass."""


class Bert(nn.Module):
    """BERT over one window of haplotypes: tokens [B, L], af [B, L] or [L], valid [B, L] -> hidden [B, L, D]; or
    over packed tokens [T] of several rows (`Packed`), af and positions [T] -> hidden [T, D].

    `gradient_checkpointing` (a runtime switch, not part of the config) recomputes each block's activations
    in the backward pass while training: less memory, about a third more time.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = SiteEmbedding(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.memory_proj = nn.Linear(config.d_model, config.d_memory)
        self.gradient_checkpointing = False
        self.apply(_init_weights)

    def forward(self, tokens: torch.Tensor, af: torch.Tensor, valid: torch.Tensor | None = None,
                after_block: AfterBlock | None = None, site_features: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, packed: Packed | None = None,
                outputs: torch.Tensor | None = None) -> torch.Tensor:
        """The project's one pass over the blocks; `site_features` [B, L, D] (or [T, D]) are added to the
        embeddings, `after_block` may change the hidden states between blocks; `positions` place the tokens in
        their window when they are some of its sites (default: all of them, in order); `packed`: the rows of
        packed tokens (then `valid` is not read), `outputs` the indices of those whose states are wanted
        (`Packed.queries` places them): the last block attends from those alone, to every token, and runs on
        (and returns) those alone."""
        x = self.embed(tokens, af, positions)
        if site_features is not None:
            x = x + site_features
        mask = packed if packed is not None else attention_mask(valid)
        for i, block in enumerate(self.blocks):
            wanted = outputs if i == len(self.blocks) - 1 else None
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, mask, wanted, use_reentrant=False)
            else:
                x = block(x, mask, wanted)
            if after_block is not None:
                x = after_block(i, x)
        return self.norm(x)

    def encode_memory(self, tokens: torch.Tensor, af: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states projected to the memory dim: what the store keeps for every reference haplotype."""
        return self.memory_proj(self(tokens, af, valid))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


def build_bert(config: BertConfig, seed: int) -> Bert:
    """A Bert initialised deterministically from `seed`, without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Bert(config)


def fingerprint(bert: Bert) -> str:
    """sha256 (first 16 hex) of the config and every weight, in name order: identifies an encoder exactly."""
    digest = hashlib.sha256(json.dumps(bert.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(bert.state_dict().items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensor.detach().float().cpu().numpy()).tobytes())
    return digest.hexdigest()[:16]


def read_checkpoint(path: str | Path, option: str, needs: str) -> dict:
    """The one checkpoint reader: `torch.load(..., weights_only=True)` of a dict holding key `needs`.

    A missing, truncated or foreign file is a UserError naming the file and the option it came from.
    """
    fix = f"pass {option} a checkpoint written by ragsnv (`ragtrain fit` OUT/best.pt or last.pt)"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(path, "no such file", fix) from None
    except IsADirectoryError:
        raise UserError(path, "is a folder, not a checkpoint", fix) from None
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(path, f"cannot be read as a checkpoint ({reason[:120]})", fix) from None
    if not isinstance(ckpt, dict) or needs not in ckpt:
        raise UserError(path, f"not a ragsnv checkpoint (no {needs})", fix)
    return ckpt


def load_bert_checkpoint(path: str | Path, option: str = "--encoder") -> Bert:
    """The Bert inside a checkpoint (ragtrain's, or one saved by `save_bert`)."""
    ckpt = read_checkpoint(path, option, needs="bert_config")
    bert = Bert(BertConfig.from_dict(ckpt["bert_config"]))
    state = ckpt.get("bert_state") or {k[len("bert."):]: v for k, v in ckpt["model"].items() if k.startswith("bert.")}
    bert.load_state_dict(state)
    return bert


def save_bert(bert: Bert, path: str | Path) -> None:
    torch.save({"bert_config": bert.config.to_dict(), "bert_state": bert.state_dict()}, path)
