"""The trainable imputer: ragprep's BERT over query haplotypes, fused with retrieved reference memory.

rag_mode:
  precomputed  neighbours' memory comes from the store (frozen encoder, no BERT pass, no gradients)
  online       neighbours run through the same trainable BERT with gradients (the research design; baseline)
  neighbours   retrieval without stored memory: the neighbours' alleles (and copying weights) alone, through the
               same fusion (ablation: what the stored embeddings add)
  none         no retrieval (baseline)

Fusion (after the chosen layers): query states cross-attend to the k neighbours' memory (keys and values projected
from the memory dim), plus cheap trainable embeddings of the neighbours' own alleles and of how far each matches the query
around each site (`retrieval.match_buckets`), and an optional light adapter.
  aligned  each site attends to the k neighbours at the same site: O(L k)
  full     each site attends to every site of every neighbour: O(L^2 k)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ragprep.model import MASK, VOCAB, Attention, Bert, BertConfig, Packed, attention_mask
from ragtrain.hmm import WEIGHT_BUCKETS
from ragtrain.retrieval import MATCH_BUCKETS, RetrievalSpec
from stores.errors import UserError

RagMode = Literal["precomputed", "online", "neighbours", "none"]
Fusion = Literal["aligned", "full"]


@dataclass(frozen=True)
class ModelConfig:
    """The imputer's architecture (retrieval settings: `ragtrain.retrieval.RetrievalSpec`; runtime:
    `ragtrain.fit.FitOptions`)."""

    bert: BertConfig = field(default_factory=BertConfig)
    rag_mode: RagMode = "precomputed"
    fusion: Fusion = "aligned"
    fusion_layers: tuple[int, ...] = ()  # empty: after every layer
    neighbour_alleles: bool = True
    adapter: bool = False
    confident: float = 1e-4  # hidden sites whose copying P(ALT) is within this of 0 or 1: left to the copying model

    def __post_init__(self) -> None:
        outside = [i for i in self.fusion_layers if not 0 <= i < self.bert.n_layers]
        if outside:
            raise UserError("--fusion-layers", f"layers {outside} do not exist (the model has layers 0.."
                            f"{self.bert.n_layers - 1})", f"choose layers between 0 and {self.bert.n_layers - 1}")

    @property
    def layers_fused(self) -> tuple[int, ...]:
        if self.rag_mode == "none":
            return ()
        return self.fusion_layers or tuple(range(self.bert.n_layers))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["fusion_layers"] = list(self.fusion_layers)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        values["bert"] = BertConfig.from_dict(data["bert"])
        values["fusion_layers"] = tuple(data.get("fusion_layers", ()))
        values.setdefault("confident", 0.0)  # checkpoints from before it ran the network over every site
        return cls(**values)

    def differences(self, other: ModelConfig) -> list[str]:
        """Field by field (the BERT's too), e.g. ['bert.d_model 64 vs 32', 'fusion aligned vs full']."""
        mine, theirs = self.to_dict(), other.to_dict()
        found = [f"bert.{k} {v} vs {theirs['bert'].get(k)}" for k, v in mine.pop("bert").items()
                 if theirs["bert"].get(k) != v]
        theirs.pop("bert")
        return found + [f"{k} {v} vs {theirs.get(k)}" for k, v in mine.items() if theirs.get(k) != v]


class NeighbourMemory(nn.Module):
    """The neighbours' memory as keys/values see it, built once for all fused layers, in the memory dim:
    LN(stored state + embedding of the neighbour's allele), plus an optional light adapter (LUMEN-style)."""

    def __init__(self, config: ModelConfig, retrieval: RetrievalSpec) -> None:
        super().__init__()
        d = config.bert.d_memory
        self.alleles = nn.Embedding(VOCAB, d) if config.neighbour_alleles else None
        self.match = nn.Embedding(MATCH_BUCKETS, d) if retrieval.match_features else None
        self.weight = nn.Embedding(WEIGHT_BUCKETS, d) if retrieval.selection == "copying" else None
        self.adapter = (nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
                        if config.adapter else None)
        self.norm = nn.LayerNorm(d)

    def forward(self, memory: torch.Tensor | None, neighbour_tokens: torch.Tensor,
                neighbour_match: torch.Tensor | None = None, neighbour_weight: torch.Tensor | None = None) -> torch.Tensor:
        """memory [B, k, L, d_mem], or None (rag_mode neighbours): the embeddings of what is known of each
        neighbour alone."""
        dtype = self.norm.weight.dtype
        m = memory.to(dtype) if memory is not None else torch.zeros(
            (*neighbour_tokens.shape, self.norm.normalized_shape[0]), dtype=dtype, device=neighbour_tokens.device)
        parts = [(table, index) for table, index in ((self.alleles, neighbour_tokens), (self.match, neighbour_match),
                                                     (self.weight, neighbour_weight)) if table is not None]
        if parts:  # one lookup in a table of every combination's sum: one pass over [..., k, d_mem], not three
            combined, index = parts[0][0].weight, parts[0][1]
            for table, part in parts[1:]:
                combined = (combined[:, None, :] + table.weight[None, :, :]).flatten(0, 1)
                index = index * table.num_embeddings + part
            m = m + F.embedding(index, combined)
        if self.adapter is not None:
            m = m + self.adapter(m)
        return self.norm(m)


class MemoryFusion(nn.Module):
    """x + CrossAttention(LN(x), memory): query states [B, L, D] attend to neighbour memory [B, k, L, d_mem],
    keys and values projected from the memory dim."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        bert = config.bert
        self.fusion = config.fusion
        self.ln_query = nn.LayerNorm(bert.d_model)
        self.attn = Attention(bert.d_model, bert.n_heads, bert.dropout, d_kv=bert.d_memory)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """memory: [B, L, k, d_mem] site-major for aligned fusion (each site's neighbours together; packed
        tokens: x [T, D], memory [T, k, d_mem]), [B, k, L, d_mem] for full."""
        q = self.ln_query(x)
        if self.fusion == "aligned":
            return x + self._aligned(q, memory)
        b, k, length, _ = memory.shape
        mask = None if valid is None else attention_mask(valid[:, None, :].expand(b, k, length).reshape(b, k * length))
        return x + self.attn(q, mask, memory.reshape(b, k * length, -1))

    def _aligned(self, q: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Each site attends to the k neighbours at the same site (memory [..., k, d_mem]): O(L k).

        Keys and values are linear in the memory, so they are never built: each head's query is carried into
        the memory dim (q W_k), its score is a dot product there, and the heads' memory mixes pass through W_v
        and the output projection at once. The same sums as projecting every neighbour (the key bias is one
        constant a site and head, which softmax over k drops), at a small part of the cost when d_mem is small
        beside k x d_model; gradients reach the same weights."""
        attn, heads = self.attn, self.attn.n_heads
        d_model = q.shape[-1]
        w_k, w_v = attn.kv.weight.unflatten(0, (2, heads, -1))  # each [h, dh, d_mem]
        b_v = attn.kv.bias[d_model:].unflatten(0, (heads, -1))  # [h, dh]
        head_dim = w_k.shape[1]
        query = attn.q(q).unflatten(-1, (heads, head_dim))  # [..., h, dh]
        query = torch.einsum("...he,hem->...hm", query, w_k) * head_dim ** -0.5  # [..., h, d_mem]
        scores = torch.matmul(memory, query.transpose(-1, -2))  # [..., k, h]: one small matmul a site
        weights = F.dropout(scores.softmax(dim=-2), attn.dropout, self.training)
        mixed = torch.matmul(weights.transpose(-1, -2), memory)  # [..., h, d_mem]
        out_w = attn.out.weight.unflatten(1, (heads, head_dim))  # [D, h, dh]
        through = torch.einsum("dhe,hem->dhm", out_w, w_v).flatten(1)  # [D, h * d_mem]
        value_bias = torch.einsum("dhe,he->hd", out_w, b_v)  # [h, D]: W_out's share of each head's W_v bias
        # weights sum to one over k, less what dropout drops: each head's value bias counts as much as is left
        return F.linear(mixed.flatten(-2), through, attn.out.bias) + weights.sum(dim=-2) @ value_bias


class RagImputer(nn.Module):
    """Logits [B, L, 2] (REF, ALT) for every site of a query window.

    With the copying model (`RetrievalSpec.selection == "copying"`) the model starts from its ALT probability:
    that probability is embedded into every site's input, its logit is added to the ALT logit with a learnt
    scale (1 at first: an untrained network imputes as the copying model does), and each neighbour's
    copying probability at each site joins its memory. The network learns what the copying model misses.
    """

    def __init__(self, config: ModelConfig, retrieval: RetrievalSpec) -> None:
        super().__init__()
        self.config = config
        self.bert = Bert(config.bert)
        self.neighbour_memory = NeighbourMemory(config, retrieval) if config.rag_mode != "none" else None
        self.fusions = nn.ModuleDict({str(i): MemoryFusion(config) for i in config.layers_fused})
        self.head = nn.Linear(config.bert.d_model, 2)
        self.copy_features = nn.Linear(2, config.bert.d_model) if retrieval.selection == "copying" else None
        self.copy_scale = nn.Parameter(torch.ones(())) if retrieval.selection == "copying" else None

    @property
    def prunes(self) -> bool:
        """Whether the network runs only over the sites it can change (`ModelConfig.confident`; it needs the
        copying model's P(ALT), `RetrievalSpec.selection` "copying", and site-aligned fusion)."""
        return self.copy_features is not None and self.config.confident > 0 and self.config.fusion == "aligned"

    @property
    def memory_at_outputs(self) -> bool:
        """Whether only the last block fuses the neighbours' memory: then packed sites read it at the outputs
        (`_kept`) alone."""
        return self.config.layers_fused == (self.config.bert.n_layers - 1,)

    def forward(self, tokens: torch.Tensor, af: torch.Tensor, valid: torch.Tensor | None = None,
                memory: torch.Tensor | None = None, neighbour_tokens: torch.Tensor | None = None,
                neighbour_match: torch.Tensor | None = None, copy_prob: torch.Tensor | None = None,
                neighbour_weight: torch.Tensor | None = None, memory_scales: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, L]; af [B, L]; valid [B, L]; memory [B, k, L, d_mem] (precomputed; int8 with
        memory_scales [B, k, L]) or None (online: built here from neighbour_tokens [B, k, L] through the
        trainable BERT); neighbour_match, neighbour_weight [B, k, L] buckets; copy_prob [B, L] the copying
        model's P(ALT).

        With `ModelConfig.confident` > 0 the network runs only over the sites whose output it can change: the
        observed ones and the hidden ones the copying model is unsure of; every other site's logits are the
        copying model's ([0, logit P(ALT)]), and a query with no unsure hidden site does not enter it. The kept
        sites of the rows that do go through packed, one after another (`_kept`)."""
        if self.config.rag_mode == "online":
            memory = self.online_memory(neighbour_tokens, af, valid)
        p = prior = None
        if self.copy_features is not None:
            p = copy_prob.float().clamp(1e-4, 1 - 1e-4)
            prior = torch.log(p) - torch.log1p(-p)  # logit
        if not self.prunes:
            return self._network(tokens, af, valid, dequantised(memory, memory_scales), neighbour_tokens,
                                 neighbour_match, neighbour_weight, p, prior)
        copying = torch.stack([torch.zeros_like(prior), prior], dim=-1)
        hidden = tokens == MASK
        unsure = hidden & (torch.minimum(copy_prob, 1 - copy_prob) > self.config.confident)
        keep = unsure | ~hidden
        if valid is not None:
            unsure, keep = unsure & valid, keep & valid
        rows = torch.nonzero(unsure.any(dim=1)).squeeze(1)
        counts = keep[rows].sum(dim=1)
        order = torch.argsort(counts, descending=True, stable=True)
        rows, counts = rows[order], counts[order]
        out = copying
        for part, groups in network_passes(counts.tolist(), tokens.shape[1]):
            out = self._kept(out, rows[part], counts[part], groups, keep, unsure, tokens, af, memory, memory_scales,
                             neighbour_tokens, neighbour_match, neighbour_weight, p, prior)
        return out

    def _kept(self, out: torch.Tensor, rows: torch.Tensor, counts: torch.Tensor, groups: list[tuple[slice, int]],
              keep: torch.Tensor, unsure: torch.Tensor, *inputs: torch.Tensor | None) -> torch.Tensor:
        """`out` with the network's logits at the unsure sites of `rows`: their kept sites (`counts` a row)
        packed row by row in window order, each row padded to its group's width for self-attention alone; the
        observed sites are context, their own logits never read (a target's typed genotype is its own, and
        training scores hidden sites), so the last block runs on the unsure sites alone."""
        row, site = torch.nonzero(keep[rows], as_tuple=True)  # row by row, each in window order
        query = rows[row]
        outputs = torch.nonzero(unsure[query, site]).squeeze(1)

        wide = next((t for t in inputs if t is not None and t.dim() > 2), None)  # any [B, k, L, ...] input
        if wide is not None:  # the (query, neighbour, site) rows of a flattened [B * k * L, ...] it is read at
            b, k, length = wide.shape[:3]
            neighbour = torch.arange(k, device=wide.device)
            at = outputs if self.memory_at_outputs else slice(None)
            flat_rows = ((query[at, None] * k + neighbour) * length + site[at, None]).flatten()

        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            """t [B, L] at the kept sites: [T]; or t [B, k, L, ...] at the kept sites, or at the outputs alone
            (`memory_at_outputs`): [T or O, k, ...] (one row gather: several times faster than indexing two dims
            around a slice)."""
            if t is None or t.dim() == 2:
                return None if t is None else t[query, site]
            return t.reshape(b * k * length, *t.shape[3:]).index_select(0, flat_rows).view(-1, k, *t.shape[3:])

        unsure_counts = torch.bincount(row[outputs], minlength=rows.shape[0])  # each row's outputs, in order
        starts, unsure_starts = (torch.cumsum(c, dim=0) - c for c in (counts, unsure_counts))
        # the last block's queries padded to the row's width too: SDPA's sums for a query depend on how many
        # queries there are, and the row's width depends on the row alone
        packed = Packed(tuple(padded_rows(starts[group], counts[group], width, site.shape[0]) for group, width in groups),
                        tuple(padded_rows(unsure_starts[group], unsure_counts[group], width, outputs.shape[0])
                              for group, width in groups))
        tokens, af, memory, scales, neighbour_tokens, match, weight, p, prior = (take(t) for t in inputs)
        logits = self._network(tokens, af, None, dequantised(memory, scales), neighbour_tokens, match, weight,
                               p, prior, positions=site, packed=packed, outputs=outputs)
        return out.index_put((query[outputs], site[outputs]), logits.to(out.dtype))

    def _network(self, tokens: torch.Tensor, af: torch.Tensor, valid: torch.Tensor | None,
                 memory: torch.Tensor | None, neighbour_tokens: torch.Tensor | None,
                 neighbour_match: torch.Tensor | None, neighbour_weight: torch.Tensor | None,
                 p: torch.Tensor | None, prior: torch.Tensor | None,
                 positions: torch.Tensor | None = None, packed: Packed | None = None,
                 outputs: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the sites given: whole windows [B, L], or packed sites [T] of several rows (`packed`, at
        `positions` in their windows, neighbour inputs [T, k, ...], or [O, k, ...] at the outputs alone when
        `memory_at_outputs`; logits of the `outputs` among them, default all); p and prior: the copying model's
        P(ALT) (clamped) and its logit."""
        if self.neighbour_memory is not None:
            memory = self.neighbour_memory(memory, neighbour_tokens, neighbour_match, neighbour_weight)
            if self.config.fusion == "aligned" and packed is None:  # site-major, once for every fused layer
                memory = memory.transpose(1, 2).contiguous()
        last = self.config.bert.n_layers - 1
        # the memory at the sites the last block returns: as given, unless it came at every kept site
        memory_out = memory[outputs] if outputs is not None and memory is not None and not self.memory_at_outputs \
            else memory

        def fuse(layer: int, x: torch.Tensor) -> torch.Tensor:
            if str(layer) not in self.fusions:
                return x
            return self.fusions[str(layer)](x, memory_out if layer == last else memory, valid)

        features = None
        if prior is not None:
            features = self.copy_features(torch.stack([p, prior / 8], dim=-1).to(self.copy_features.weight.dtype))
        logits = self.head(self.bert(tokens, af, valid, after_block=fuse if self.fusions else None,
                                     site_features=features, positions=positions, packed=packed, outputs=outputs))
        if prior is None:
            return logits
        if outputs is not None:
            prior = prior[outputs]
        return logits + torch.stack([torch.zeros_like(prior), self.copy_scale * prior], dim=-1).to(logits.dtype)

    def online_memory(self, neighbour_tokens: torch.Tensor, af: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """The research design: retrieved haplotypes through the trainable BERT, with gradients."""
        b, k, length = neighbour_tokens.shape
        flat_valid = None if valid is None else valid.repeat_interleave(k, dim=0)
        memory = self.bert.encode_memory(neighbour_tokens.reshape(b * k, length), af.repeat_interleave(k, dim=0),
                                         flat_valid)
        return memory.reshape(b, k, length, -1)


TOKENS_A_PASS = 8192
"""Pruned windows go through the network at most this many tokens at a time (padded to their rows' widths,
`network_passes`): on the CPU the largest activation (k x d_memory a token at the defaults) stays under 16 MB,
which glibc keeps between batches."""


ROW_WIDTH_STEP = 16
"""Packed rows are padded to a multiple of this for self-attention (`row_groups`): against the power of two at
or above each row's count, the real split's attention ran 0.75 -> 0.54 s (profiler, the same logits within
1e-6), the padded work 2.17x -> 1.34x the rows' own."""


def row_groups(counts: list[int], length: int, budget: int = TOKENS_A_PASS) -> list[tuple[slice, int]]:
    """(rows, width) groups of consecutive rows sorted by kept sites, widest first. A row's width is its count
    rounded up to a multiple of ROW_WIDTH_STEP (at most the window `length`): it depends on the row alone, so its
    logits do not depend on the other rows of the batch. A group holds rows of one width, at most `budget` tokens
    of them."""
    groups: list[tuple[slice, int]] = []
    for i, count in enumerate(counts):
        width = min(-(-max(count, 1) // ROW_WIDTH_STEP) * ROW_WIDTH_STEP, length)
        if groups and groups[-1][1] == width and (i + 1 - groups[-1][0].start) * width <= budget:
            groups[-1] = (slice(groups[-1][0].start, i + 1), width)
        else:
            groups.append((slice(i, i + 1), width))
    return groups


def network_passes(counts: list[int], length: int,
                   budget: int = TOKENS_A_PASS) -> list[tuple[slice, list[tuple[slice, int]]]]:
    """The rows (sorted by kept sites, widest first) in passes through the network: consecutive `row_groups`,
    at most `budget` padded tokens a pass (one group at least); each pass's groups, relative to its first row."""
    passes: list[tuple[slice, list[tuple[slice, int]]]] = []
    used = budget
    for group, width in row_groups(counts, length, budget):
        tokens = (group.stop - group.start) * width
        if used + tokens > budget:
            passes.append((slice(group.start, group.start), []))
            used = 0
        first = passes[-1][0].start
        passes[-1] = (slice(first, group.stop), passes[-1][1] + [(slice(group.start - first, group.stop - first), width)])
        used += tokens
    return passes


def padded_rows(starts: torch.Tensor, counts: torch.Tensor, width: int, end: int) -> torch.Tensor:
    """int64 [R, width]: the indices of R rows of items stored one after another (row r: `counts[r]` of them
    from `starts[r]`), `end` where a row is shorter than `width`."""
    offset = torch.arange(width, device=counts.device)[None, :]
    return torch.where(offset < counts[:, None], starts[:, None] + offset, end)


def dequantised(memory: torch.Tensor | None, scales: torch.Tensor | None) -> torch.Tensor | None:
    """Stored memory as numbers: int8 values times their scales [..., 1] (float16 memory as it is)."""
    if memory is None or scales is None:
        return memory
    return memory.float() * scales.float()[..., None]


def batch_logits(model: RagImputer, batch) -> torch.Tensor:
    """Logits of a `ragtrain.data.Batch` already on the model's device (bf16 autocast on CUDA)."""
    device_type = batch.tokens.device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=device_type == "cuda"):
        return model(batch.tokens, batch.af, batch.valid, batch.memory, batch.neighbour_tokens,
                     batch.neighbour_match, batch.copy_prob, batch.neighbour_weight, batch.memory_scales)
