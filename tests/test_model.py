"""The fused model's arithmetic: aligned fusion equals attention over explicitly projected neighbour keys and values;
the network run over only the sites it can change equals it run over those sites alone."""

from __future__ import annotations

import pytest
import torch

from ragprep.model import MASK, PAD, BertConfig
from ragtrain.hmm import WEIGHT_BUCKETS
from ragtrain.model import ROW_WIDTH_STEP, MemoryFusion, ModelConfig, RagImputer, network_passes, row_groups
from ragtrain.retrieval import MATCH_BUCKETS, RetrievalSpec


def explicit_aligned(fusion: MemoryFusion, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """Every neighbour's key and value built, then softmax over the k neighbours of each site and head."""
    attn, heads = fusion.attn, fusion.attn.n_heads
    q = attn.q(fusion.ln_query(x)).unflatten(-1, (heads, -1))  # [B, L, h, dh]
    key, value = (t.unflatten(-1, (heads, -1)) for t in attn.kv(memory).chunk(2, dim=-1))  # [B, L, k, h, dh]
    scores = (q[:, :, None] * key).sum(-1) * q.shape[-1] ** -0.5  # [B, L, k, h]
    mixed = (scores.softmax(dim=2)[..., None] * value).sum(dim=2)  # [B, L, h, dh]
    return x + attn.out(mixed.flatten(2))


def test_aligned_fusion_equals_explicit_keys_and_values():
    torch.manual_seed(0)
    config = ModelConfig(bert=BertConfig(d_model=32, n_heads=4, d_memory=12))
    fusion = MemoryFusion(config)
    for p in fusion.parameters():  # biases too: the key bias must drop out, the value bias must not
        torch.nn.init.normal_(p, std=0.3)
    x, memory = torch.randn(3, 10, 32), torch.randn(3, 10, 5, 12)  # memory site-major [B, L, k, d_mem]
    torch.testing.assert_close(fusion(x, memory, None), explicit_aligned(fusion, x, memory), rtol=1e-5, atol=1e-5)
    grads = [torch.autograd.grad(f(fusion, x, memory).square().sum(), fusion.attn.kv.weight)[0]
             for f in (lambda m, a, b: m(a, b, None), explicit_aligned)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def imputer_inputs(b: int, length: int, k: int, d_memory: int, generator: torch.Generator) -> dict:
    """A batch as `ragtrain.data.BatchBuilder` makes it: tokens with observed and hidden (MASK) sites, the last
    sites padded, int8 memory with its scales, buckets, the copying model's P(ALT)."""
    tokens = torch.randint(0, 2, (b, length), generator=generator)
    tokens[torch.rand(b, length, generator=generator) < 0.7] = MASK
    valid = torch.ones(b, length, dtype=torch.bool)
    valid[:, length - 3:] = False
    tokens[~valid] = PAD
    return {"tokens": tokens, "af": torch.rand(b, length, generator=generator), "valid": valid,
            "memory": torch.randint(-127, 128, (b, k, length, d_memory), generator=generator, dtype=torch.int8),
            "neighbour_tokens": torch.randint(0, 2, (b, k, length), generator=generator),
            "neighbour_match": torch.randint(0, MATCH_BUCKETS, (b, k, length), generator=generator),
            "copy_prob": torch.rand(b, length, generator=generator),
            "neighbour_weight": torch.randint(0, WEIGHT_BUCKETS, (b, k, length), generator=generator),
            "memory_scales": torch.rand(b, k, length, generator=generator).half() / 100}


def twin_imputers(confident: float, fusion_layers: tuple[int, ...]) -> tuple[RagImputer, RagImputer]:
    """The same weights, pruning at `confident` and running over every site; position embeddings zero, so a
    site's logits cannot depend on where its window's other kept sites lie."""
    bert = BertConfig(d_model=32, n_layers=2, n_heads=4, window=24, d_memory=8)
    pruned = RagImputer(ModelConfig(bert=bert, confident=confident, fusion_layers=fusion_layers),
                        RetrievalSpec(k=3)).eval()
    whole = RagImputer(ModelConfig(bert=bert, confident=0.0, fusion_layers=fusion_layers), RetrievalSpec(k=3)).eval()
    with torch.no_grad():
        for p in pruned.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the untrained head is near zero: give it something to say
        pruned.bert.embed.position.weight.zero_()
    whole.load_state_dict(pruned.state_dict())
    return pruned, whole


FUSED = pytest.mark.parametrize("fusion_layers", [(), (1,)], ids=["fused-every-layer", "fused-last-layer"])
"""Fusion after every layer, or after the last alone (packed sites then read the memory at their outputs alone)."""


@FUSED
def test_pruned_network_equals_the_whole_network_at_the_unsure_sites(fusion_layers):
    generator = torch.Generator().manual_seed(3)
    pruned, whole = twin_imputers(1e-3, fusion_layers)
    assert pruned.memory_at_outputs == (fusion_layers == (1,))
    inputs = imputer_inputs(4, 24, 3, 8, generator)
    p = inputs["copy_prob"]
    hidden = inputs["tokens"] == MASK
    p[hidden & (torch.rand(p.shape, generator=generator) < 0.6)] = 1e-5  # confident REF
    p[hidden & (torch.rand(p.shape, generator=generator) < 0.2)] = 1 - 1e-5  # confident ALT
    p[1][hidden[1]] = 1e-6  # row 1: nothing hidden is unsure, so the network never sees it
    with torch.no_grad():
        logits = pruned(**inputs)
    copying = torch.stack([torch.zeros_like(p), torch.logit(p.clamp(1e-4, 1 - 1e-4))], dim=-1)
    unsure = hidden & (torch.minimum(p, 1 - p) > 1e-3) & inputs["valid"]
    assert unsure.sum() > 5 and not unsure[1].any()
    confident = (hidden & ~unsure) | ~inputs["valid"]
    torch.testing.assert_close(logits[confident], copying[confident])
    torch.testing.assert_close(logits[1], copying[1])
    observed = ~hidden & inputs["valid"]  # context for the unsure sites; their own logits are never read
    torch.testing.assert_close(logits[observed], copying[observed])
    for row in (0, 2, 3):  # the kept sites alone, in order, through the network that runs over every site
        kept = torch.nonzero((unsure | ~hidden)[row] & inputs["valid"][row]).squeeze(1)
        alone = {name: (t[row:row + 1, kept] if t.dim() == 2 else t[row:row + 1, :, kept])
                 for name, t in inputs.items()}
        with torch.no_grad():
            expected = whole(**alone)[0][unsure[row, kept]]
        torch.testing.assert_close(logits[row][unsure[row]], expected, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(expected, copying[row][unsure[row]], atol=1e-3)  # the network did change them


@FUSED
def test_pruned_network_trains_and_every_site_kept_is_the_whole_network(fusion_layers):
    generator = torch.Generator().manual_seed(4)
    pruned, whole = twin_imputers(1e-3, fusion_layers)
    inputs = imputer_inputs(3, 24, 3, 8, generator)
    inputs["copy_prob"] = 0.1 + 0.8 * inputs["copy_prob"]  # every hidden site unsure: nothing left out
    hidden = (inputs["tokens"] == MASK) & inputs["valid"]  # padding and observed sites: never read
    with torch.no_grad():
        torch.testing.assert_close(pruned(**inputs)[hidden], whole(**inputs)[hidden], rtol=1e-4, atol=1e-5)
    pruned.train()
    pruned(**inputs)[..., 1].sum().backward()
    assert pruned.bert.blocks[0].attn.q.weight.grad.abs().sum() > 0
    assert pruned.fusions[str((fusion_layers or (0,))[0])].attn.kv.weight.grad.abs().sum() > 0
    assert pruned.neighbour_memory.alleles.weight.grad.abs().sum() > 0


def test_row_groups_pad_each_row_to_its_own_width_within_the_budget():
    counts = [150, 100, 90, 64, 63, 33, 32, 17, 16, 3, 1, 1]  # widest first, as the model sorts them
    groups = row_groups(counts, length=152, budget=300)
    assert [g.start for g, _ in groups] == [0] + [g.stop for g, _ in groups][:-1] and groups[-1][0].stop == 12
    for group, width in groups:
        for count in counts[group]:  # the row's own width: its count rounded up to the step, or the window
            assert count <= width <= 152 and (width == 152 or width - ROW_WIDTH_STEP < count)
            assert width == 152 or width % ROW_WIDTH_STEP == 0
        assert (group.stop - group.start) * width <= 300 or group.stop - group.start == 1
    assert [(g.stop - g.start, w) for g, w in groups] == [(1, 152), (1, 112), (1, 96), (2, 64), (1, 48), (2, 32), (4, 16)]
    assert [(g.stop - g.start, w) for g, w in row_groups([16, 3, 1, 1], length=152, budget=40)] == [(2, 16), (2, 16)]


def test_network_passes_take_every_group_once_within_the_budget():
    counts = [150, 100, 90, 64, 63, 33, 32, 17, 16, 3, 1, 1]
    passes = network_passes(counts, length=160, budget=300)
    assert [p.start for p, _ in passes] == [0] + [p.stop for p, _ in passes][:-1] and passes[-1][0].stop == 12
    regrouped = [(slice(p.start + g.start, p.start + g.stop), w) for p, groups in passes for g, w in groups]
    assert regrouped == row_groups(counts, length=160, budget=300)
    for part, groups in passes:
        assert sum((g.stop - g.start) * w for g, w in groups) <= 300 or len(groups) == 1
        assert groups[-1][0].stop == part.stop - part.start
