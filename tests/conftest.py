"""Shared fixtures: small real panels simulated with msprime, and real stores encoded from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragprep.encode import EncodeOptions, encode
from ragprep.model import BertConfig
from ragprep.simulate import simulate_panel

TINY = BertConfig(d_model=16, n_layers=1, n_heads=2, window=32, d_memory=8)


def tiny_options(**overrides) -> EncodeOptions:
    """Encode options small enough for a test: 16 dims, 1 layer, windows of 32 sites with stride 24."""
    base = dict(config=TINY, stride=24, seed=3, device="cpu", batch_size=32, hap_block=16)
    return EncodeOptions(**{**base, **overrides})


@pytest.fixture(scope="session")
def panel_vcf(tmp_path_factory) -> Path:
    """60 diploid samples, ~300 biallelic sites (OutOfAfrica_3G09), bgzipped and indexed."""
    path, _ = simulate_panel(tmp_path_factory.mktemp("panel") / "panel.vcf.gz", samples=60, length=1e5, seed=7)
    return path


@pytest.fixture(scope="session")
def store_path(panel_vcf, tmp_path_factory) -> str:
    """A complete fp16 store of `panel_vcf` at the tiny config."""
    out = str(tmp_path_factory.mktemp("store") / "store.zarr")
    encode(str(panel_vcf), out, tiny_options())
    return out
