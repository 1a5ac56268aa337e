"""The fused model's arithmetic: aligned fusion equals attention over explicitly projected neighbour keys and values."""

from __future__ import annotations

import torch

from ragprep.model import BertConfig
from ragtrain.model import MemoryFusion, ModelConfig


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
