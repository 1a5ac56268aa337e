"""Real training steps on a real store: retrieval helps, resume is exact, wrong stores are refused."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from ragprep.encode import encode
from ragprep.model import build_bert, save_bert
from ragtrain.cli import app
from ragtrain.data import BatchBuilder, panel_queries, split_samples
from ragtrain.fit import FitOptions, Trainer, fit
from ragtrain.masking import MaskSpec, apply_mask
from ragtrain.retrieval import match_buckets
from stores import StoreError, open_store
from tests.conftest import TINY, tiny_options


def options(store: str, out, **overrides) -> FitOptions:
    base = {"store": store, "out": str(out), "device": "cpu", "batch_size": 16, "max_steps": 40, "eval_every": 20,
            "warmup": 5, "lr": 3e-3, "k": 4, "seed": 5, "mask": "random:0.3-0.8", "val_mask": "array:4:0.05",
            "val_fraction": 0.2}
    return FitOptions(**{**base, **overrides})


def test_retrieval_beats_no_retrieval(store_path, tmp_path):
    """Same steps, seeds and masks: precomputed memory gives a clearly higher validation r2 than none.

    Half the sites observed, so that Hamming retrieval over a 32-site window has sites to match on
    (seen: 0.84 vs 0.72)."""
    dense = {"max_steps": 120, "eval_every": 120, "val_mask": "random:0.5-0.5"}
    with_memory = fit(options(store_path, tmp_path / "rag", **dense))
    without = fit(options(store_path, tmp_path / "none", rag_mode="none", **dense))
    assert with_memory.last_metrics["r2_all"] > without.last_metrics["r2_all"] + 0.08
    assert (tmp_path / "rag" / "metrics.csv").read_text().count("\n") == 2  # header + one evaluation


def test_online_mode_trains(store_path, tmp_path):
    result = fit(options(store_path, tmp_path / "online", rag_mode="online", max_steps=4, eval_every=4))
    assert result.steps == 4 and np.isfinite(result.last_metrics["val_loss"])


def test_resume_is_bit_identical(store_path, tmp_path):
    straight = Trainer(options(store_path, tmp_path / "straight", max_steps=16, eval_every=8))
    straight.run()
    first = Trainer(options(store_path, tmp_path / "resumed", max_steps=16, eval_every=8, stop_after=8))
    first.run()
    assert first.step == 8
    second = Trainer(options(store_path, tmp_path / "resumed", max_steps=16, eval_every=8, resume=True))
    assert second.step == 8
    second.run()
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name
    for a, b in zip(straight.optimizer.state_dict()["state"].values(), second.optimizer.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])


def test_checkpoint_loads_with_weights_only(store_path, tmp_path):
    fit(options(store_path, tmp_path / "run", max_steps=2, eval_every=2))
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "progress", "model_config"} <= set(ckpt)
    assert not list((tmp_path / "run").glob("*.tmp-*"))  # atomic writes leave no temporaries


def test_query_never_retrieves_its_own_sample_and_ids_index_the_store(store_path):
    store = open_store(store_path)
    haps = store.haplotypes(0, int(store.positions.size))
    train, _ = split_samples(haps.shape[0] // 2, 0.2, seed=1)
    queries = panel_queries(haps, train)
    builder = BatchBuilder(store, haps, queries, MaskSpec.parse("random:0.5-0.5"), seed=1, k=4, rag_mode="precomputed")
    for window in range(store.n_windows):
        ids = np.arange(len(queries))
        batch = builder.build(0, window, ids)
        span = builder.window_span(window)
        neighbours = builder.retrieve(window, np.where(batch.labels[:, :span.stop - span.start].numpy() >= 0, -1,
                                                       queries.alleles[ids, span]), ids)
        own = queries.sample_key[ids]
        assert not (neighbours // 2 == own[:, None]).any()
        expected = store.read_neighbours(window, neighbours.reshape(-1)).values
        assert np.array_equal(batch.memory.numpy().reshape(expected.shape), expected)
        n = span.stop - span.start
        assert np.array_equal(batch.neighbour_tokens.numpy()[:, :, :n], haps[neighbours, span])


def test_retrieval_flank_finds_neighbours_that_match_the_hidden_sites(store_path):
    """Array-like masks leave a few observed sites a window; a flank keys retrieval on the sites around it too,
    so the neighbours agree more often with the query's hidden alleles. Masks inside the window are drawn over
    the key span, so query tokens and retrieval key come from one mask."""
    store = open_store(store_path)
    haps = store.haplotypes(0, int(store.positions.size))
    queries = panel_queries(haps, split_samples(haps.shape[0] // 2, 0.2, seed=1)[0])
    ids = np.arange(len(queries))
    agreement = {}
    for flank in (0, 96):
        builder = BatchBuilder(store, haps, queries, MaskSpec.parse("array:6:0.05"), seed=1, k=4,
                               rag_mode="precomputed", flank=flank)
        hits = total = 0
        for window in range(store.n_windows):
            batch, span = builder.build(0, window, ids), builder.window_span(window)
            key = builder.key_span(window)
            assert builder.masks(0, window, ids).shape == (len(ids), key.stop - key.start)
            n = span.stop - span.start
            hidden = batch.labels.numpy()[:, :n] >= 0
            truth = queries.alleles[ids, span]
            hits += int(((batch.neighbour_tokens.numpy()[:, :, :n] == truth[:, None]) & hidden[:, None]).sum())
            total += int(hidden.sum()) * 4
        agreement[flank] = hits / total
    assert agreement[96] > agreement[0] + 0.01, agreement


def test_match_features_describe_the_retrieved_neighbours(store_path):
    store = open_store(store_path)
    haps = store.haplotypes(0, int(store.positions.size))
    queries = panel_queries(haps, split_samples(haps.shape[0] // 2, 0.2, seed=1)[0])
    builder = BatchBuilder(store, haps, queries, MaskSpec.parse("array:6:0.05"), seed=1, k=4,
                           rag_mode="precomputed", flank=40, match_features=True)
    ids, window = np.arange(8), 1
    batch = builder.build(0, window, ids)
    span, key = builder.window_span(window), builder.key_span(window)
    observed = apply_mask(queries.alleles[ids, key], builder.masks(0, window, ids))
    neighbours = builder.retrieve(window, observed, ids)
    expected = match_buckets(observed, haps[neighbours, key])[:, :, span.start - key.start:span.stop - key.start]
    assert np.array_equal(batch.neighbour_match.numpy()[:, :, :span.stop - span.start], expected)
    assert batch.neighbour_match.shape == batch.neighbour_tokens.shape


def test_store_with_other_encoder_is_refused(store_path, tmp_path):
    other = tmp_path / "other.pt"
    save_bert(build_bert(TINY, seed=99), other)
    with pytest.raises(StoreError, match="fingerprint"):
        Trainer(options(store_path, tmp_path / "x", encoder=str(other)))
    result = CliRunner().invoke(app, ["fit", "--store", store_path, "--out", str(tmp_path / "y"),
                                      "--encoder", str(other), "--device", "cpu"])
    assert result.exit_code == 2
    assert "fingerprint" in result.output and "fix:" in result.output


def test_incomplete_store_is_refused(panel_vcf, store_path, tmp_path):
    partial = tmp_path / "partial.zarr"
    shutil.copytree(store_path, partial)
    zarr.open_group(str(partial), mode="r+")["window_done"][0] = False
    with pytest.raises(StoreError, match="incomplete"):
        Trainer(options(str(partial), tmp_path / "x"))


def test_bad_train_vcf_is_refused(store_path, tmp_path):
    bad = tmp_path / "bad.vcf"
    bad.write_text("not a vcf\n")
    result = CliRunner().invoke(app, ["fit", "--store", store_path, "--out", str(tmp_path / "y"),
                                      "--train", str(bad), "--device", "cpu"])
    assert result.exit_code == 2 and "bad.vcf" in result.output


def test_separate_training_vcf(panel_vcf, store_path, tmp_path):
    result = fit(options(store_path, tmp_path / "train", train_vcf=str(panel_vcf), max_steps=4, eval_every=4))
    assert result.steps == 4


def test_int8_store_trains(panel_vcf, tmp_path):
    store = str(tmp_path / "int8.zarr")
    encode(str(panel_vcf), store, tiny_options(memory_dtype="int8"))
    result = fit(options(store, tmp_path / "int8run", max_steps=4, eval_every=4))
    assert np.isfinite(result.last_metrics["val_loss"])
