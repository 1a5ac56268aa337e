"""Real training steps on a real store: retrieval helps, resume is exact, wrong stores are refused."""

from __future__ import annotations

import gzip
import itertools
import os
import random
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from ragprep.model import build_bert, save_bert
from ragtrain import impute as impute_module
from ragtrain.cli import app
from ragtrain.data import (
    WINDOWS_A_PASS,
    BatchBuilder,
    PanelAlleles,
    cores_shared,
    epoch_plan,
    panel_queries,
    split_samples,
)
from ragtrain.fit import FitOptions, Trainer, fit, masked_loss
from ragtrain.impute import Imputer
from ragtrain.masking import MaskSpec, apply_mask
from ragtrain.model import batch_logits, dequantised
from ragtrain.retrieval import RetrievalSpec, match_buckets
from stores import EmbeddingStore, UserError, open_store
from tests.conftest import TINY


def options(store: str, out, **overrides) -> FitOptions:
    base = {"store": store, "out": str(out), "device": "cpu", "batch_size": 16, "max_steps": 40, "eval_every": 20,
            "warmup": 5, "lr": 3e-3, "retrieval": RetrievalSpec(k=4, flank=0), "seed": 5, "mask": "random:0.3-0.8",
            "val_mask": "array:4:0.05", "val_fraction": 0.2}
    return FitOptions(**{**base, **overrides})


def builder(store, haps, queries, mask: str, **retrieval) -> BatchBuilder:
    return BatchBuilder(store, haps, queries, retrieval=RetrievalSpec(**{"k": 4, "flank": 0, "segment": 0, **retrieval}),
                        rag_mode="precomputed", mask=MaskSpec.parse(mask), seed=1)


def test_retrieval_beats_no_retrieval(store_path, tmp_path):
    """Same steps, seeds and masks: precomputed memory gives a clearly higher validation r2 than none.

    Half the sites observed, so that Hamming retrieval over a 32-site window has sites to match on
    (seen: 0.84 vs 0.72)."""
    dense = {"max_steps": 120, "eval_every": 120, "val_mask": "random:0.5-0.5",
             "retrieval": RetrievalSpec(k=4, flank=0, selection="hamming")}
    with_memory = fit(options(store_path, tmp_path / "rag", **dense))
    without = fit(options(store_path, tmp_path / "none", rag_mode="none", **dense))
    assert with_memory.last_metrics["r2_all"] > without.last_metrics["r2_all"] + 0.08
    assert (tmp_path / "rag" / "metrics.csv").read_text().count("\n") == 2  # header + one evaluation


def test_neighbours_mode_fuses_retrieved_alleles_without_reading_the_store(store_path, tmp_path, one_thread,
                                                                          monkeypatch):
    """The ablation of the stored memory: neighbours are retrieved and fused, their embeddings never read."""
    trainer = Trainer(options(store_path, tmp_path / "nb", rag_mode="neighbours", max_steps=100, eval_every=100))
    monkeypatch.setattr(EmbeddingStore, "read_neighbours", lambda *a: pytest.fail("the store's memory was read"))
    batch = trainer.builder().build(0, 0, np.arange(16))
    assert batch.memory is None and batch.neighbour_tokens is not None
    first = masked_loss(batch_logits(trainer.model, batch), batch.labels)
    first.backward()
    assert trainer.model.neighbour_memory.alleles.weight.grad.abs().sum() > 0  # the neighbours' alleles are used
    trainer.model.zero_grad()
    trainer.run()
    assert masked_loss(batch_logits(trainer.model, batch), batch.labels).item() < first.item()


def test_online_mode_trains_the_bert_through_the_neighbours(store_path, tmp_path, one_thread):
    """Online memory runs the retrieved haplotypes through the trainable BERT: its loss falls, and its memory
    carries gradients into the BERT (precomputed memory does not)."""
    trainer = Trainer(options(store_path, tmp_path / "online", rag_mode="online", max_steps=100, eval_every=100))
    batch = trainer.builder().build(0, 0, np.arange(16))
    memory = trainer.model.online_memory(batch.neighbour_tokens, batch.af, batch.valid)
    memory.sum().backward()
    assert trainer.model.bert.blocks[0].attn.q.weight.grad.abs().sum() > 0
    trainer.model.zero_grad()
    first = masked_loss(batch_logits(trainer.model, batch), batch.labels).item()
    trainer.run()
    assert masked_loss(batch_logits(trainer.model, batch), batch.labels).item() < first


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


def test_worker_processes_build_the_batches_the_thread_builds(store_path, tmp_path):
    """Batches built by two DataLoader processes arrive in order and are the same: the same weights, the same
    validation; the stage seconds come back from the workers."""
    thread = Trainer(options(store_path, tmp_path / "thread", max_steps=6, eval_every=6))
    thread.run()
    workers = Trainer(options(store_path, tmp_path / "workers", max_steps=6, eval_every=6, workers=2))
    result = workers.run()
    for name, tensor in thread.model.state_dict().items():
        assert torch.equal(tensor, workers.model.state_dict()[name]), name
    assert workers.best_r2 == thread.best_r2 and 0.0 <= result.data_wait <= 1.0
    assert workers.imputer.clock.seconds["copying model"] > 0  # validation's batches, built in workers


def test_checkpoint_loads_with_weights_only(store_path, tmp_path):
    fit(options(store_path, tmp_path / "run", max_steps=2, eval_every=2, retrieval=RetrievalSpec(k=3, flank=40)))
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "progress", "model_config", "retrieval"} <= set(ckpt)
    assert ckpt["retrieval"] == RetrievalSpec(k=3, flank=40).to_dict()
    assert {"k", "flank", "segment", "selection", "states", "local_states", "local_flank", "ne", "mismatch", "match_features", "backend"} == set(ckpt["retrieval"])
    assert "k" not in ckpt["model_config"] and "checkpointing" not in ckpt["model_config"]
    assert not list((tmp_path / "run").glob(".*.part-*"))  # atomic writes leave no temporaries


def test_resume_takes_new_runtime_settings_and_refuses_new_architecture_or_retrieval(store_path, tmp_path):
    run = tmp_path / "run"
    fit(options(store_path, run, max_steps=4, eval_every=2, stop_after=2))
    resumed = Trainer(options(store_path, run, max_steps=4, eval_every=2, resume=True, checkpointing=True,
                              lr=1e-3, batch_size=8))
    assert resumed.step == 2 and resumed.model.bert.gradient_checkpointing
    assert resumed.scheduler.base_lrs == [1e-3]
    for changed, named in (({"retrieval": RetrievalSpec(k=5, flank=0)}, "k 4 vs 5"),
                           ({"retrieval": RetrievalSpec(k=4, flank=10)}, "flank 0 vs 10"),
                           ({"fusion": "full"}, "fusion aligned vs full"),
                           ({"adapter": True}, "adapter False vs True"),
                           ({"seed": 6}, "seed 5 vs 6")):
        with pytest.raises(UserError, match=f"trained with other settings \\({named}"):
            Trainer(options(store_path, run, max_steps=4, resume=True, **changed))


def test_out_with_an_earlier_run_needs_resume_or_overwrite(store_path, tmp_path):
    run = tmp_path / "run"
    fit(options(store_path, run, max_steps=2, eval_every=2))
    with pytest.raises(UserError, match="holds an earlier run; fix: pass --resume .* --overwrite"):
        Trainer(options(store_path, run, max_steps=2))
    fit(options(store_path, run, max_steps=2, eval_every=2, overwrite=True))
    assert (run / "metrics.csv").read_text().count("\n") == 2  # replaced, not appended to


def test_fusion_layers_that_do_not_exist_are_refused(store_path, tmp_path):
    with pytest.raises(UserError, match=r"^--fusion-layers: layers \[7\] do not exist"):
        Trainer(options(store_path, tmp_path / "x", fusion_layers=(7,)))


def test_without_validation_samples_best_is_the_latest_and_no_r2_is_reported(store_path, tmp_path):
    result = fit(options(store_path, tmp_path / "run", max_steps=2, eval_every=1, val_fraction=0.0))
    assert result.last_metrics.keys() == {"step", "epoch", "train_loss", "data_wait", "lr"}
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["progress"]["step"] == 2


@pytest.mark.parametrize("selection", ["copying", "hamming"])
def test_query_never_retrieves_its_own_sample_and_ids_index_the_store(store_path, selection):
    store = open_store(store_path)
    haps = store.alleles()
    train, _ = split_samples(haps.shape[0] // 2, 0.2, seed=1)
    queries = panel_queries(haps, train)
    batches = builder(store, haps, queries, "random:0.5-0.5", selection=selection)
    for window in range(store.n_windows):
        ids = np.arange(len(queries))
        batch = batches.build(0, window, ids)
        span = store.plan.sites(window)
        neighbours = batch.neighbour_ids
        if selection == "hamming":
            np.testing.assert_array_equal(neighbours, batches.retrieve(
                window, np.where(batch.labels[:, :span.stop - span.start].numpy() >= 0, -1, queries.alleles[ids, span]),
                ids))
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
    haps = store.alleles()
    queries = panel_queries(haps, split_samples(haps.shape[0] // 2, 0.2, seed=1)[0])
    ids = np.arange(len(queries))
    agreement = {}
    for flank in (0, 96):
        batches = builder(store, haps, queries, "array:6:0.05", flank=flank, selection="hamming")
        hits = total = 0
        for window in range(store.n_windows):
            batch, span = batches.build(0, window, ids), store.plan.sites(window)
            key = batches.key_span(window)
            assert key == store.plan.key_span(window, flank)
            assert batches.masks(0, window, ids).shape == (len(ids), key.stop - key.start)
            n = span.stop - span.start
            hidden = batch.labels.numpy()[:, :n] >= 0
            truth = queries.alleles[ids, span]
            hits += int(((batch.neighbour_tokens.numpy()[:, :, :n] == truth[:, None]) & hidden[:, None]).sum())
            total += int(hidden.sum()) * 4
        agreement[flank] = hits / total
    assert agreement[96] > agreement[0] + 0.01, agreement


def test_match_features_describe_the_retrieved_neighbours(store_path):
    store = open_store(store_path)
    haps = store.alleles()
    queries = panel_queries(haps, split_samples(haps.shape[0] // 2, 0.2, seed=1)[0])
    batches = builder(store, haps, queries, "array:6:0.05", flank=40, match_features=True)
    ids, window = np.arange(8), 1
    batch = batches.build(0, window, ids)
    span, key = store.plan.sites(window), batches.key_span(window)
    observed = apply_mask(queries.alleles[ids, key], batches.masks(0, window, ids))
    neighbours = batch.neighbour_ids
    expected = match_buckets(observed, haps[neighbours, key])[:, :, span.start - key.start:span.stop - key.start]
    assert np.array_equal(batch.neighbour_match.numpy()[:, :, :span.stop - span.start], expected)
    assert batch.neighbour_match.shape == batch.neighbour_tokens.shape


def test_store_with_other_encoder_is_refused(store_path, tmp_path):
    other = tmp_path / "other.pt"
    save_bert(build_bert(TINY, seed=99), other)
    with pytest.raises(UserError, match="fingerprint"):
        Trainer(options(store_path, tmp_path / "x", encoder=str(other)))
    assert not (tmp_path / "x").exists()  # refused before anything is written
    result = CliRunner().invoke(app, ["fit", "--store", store_path, "--out", str(tmp_path / "y"),
                                      "--encoder", str(other), "--device", "cpu"])
    assert result.exit_code == 2
    assert "fingerprint" in result.output and "fix:" in result.output


def test_incomplete_store_is_refused(panel_vcf, store_path, tmp_path):
    partial = tmp_path / "partial.zarr"
    shutil.copytree(store_path, partial)
    zarr.open_group(str(partial), mode="r+")["window_done"][0] = False
    with pytest.raises(UserError, match="incomplete"):
        Trainer(options(str(partial), tmp_path / "x"))


def test_bad_train_vcf_is_refused(store_path, tmp_path):
    bad = tmp_path / "bad.vcf"
    bad.write_text("not a vcf\n")
    result = CliRunner().invoke(app, ["fit", "--store", store_path, "--out", str(tmp_path / "y"),
                                      "--train", str(bad), "--device", "cpu"])
    assert result.exit_code == 2 and "bad.vcf" in result.output


def test_separate_training_vcf_never_trains_on_validation_samples(panel_vcf, store_path, tmp_path):
    """--train with the panel itself: its validation samples must not come back as training queries."""
    trainer = Trainer(options(store_path, tmp_path / "train", train=str(panel_vcf), max_steps=4, eval_every=4))
    store = open_store(store_path)
    train_samples, val_samples = split_samples(store.sample_ids.size, 0.2, seed=5)
    assert len(trainer.train_queries) == 2 * train_samples.size
    np.testing.assert_array_equal(trainer.train_queries.alleles, store.alleles()[np.repeat(2 * train_samples, 2)
                                                                                 + np.tile([0, 1], train_samples.size)])
    panel_ids = trainer.train_queries.exclude[:, 0] // 2  # each query excludes its own panel sample
    assert not np.isin(panel_ids, val_samples).any()
    assert trainer.run().steps == 4


def test_int8_store_feeds_the_dequantised_memory(int8_store_path, store_path, tmp_path):
    """An int8 store trains, and the memory its batches carry is the fp16 store's within int8 rounding."""
    runs = {name: Trainer(options(path, tmp_path / name, max_steps=4, eval_every=4))
            for name, path in (("int8", int8_store_path), ("fp16", store_path))}
    ids = np.arange(16)
    batch = runs["int8"].builder().build(0, 1, ids).to(torch.device("cpu"))
    assert batch.memory.dtype == torch.int8  # carried as stored; the model dequantises what it reads
    int8 = dequantised(batch.memory, batch.memory_scales)
    fp16 = runs["fp16"].builder().build(0, 1, ids).memory.float()
    scale = fp16.abs().amax(dim=-1, keepdim=True) / 127
    assert (int8 - fp16).abs().le(scale * 0.51 + 1e-3).all()
    assert runs["int8"].run().last_metrics["r2_all"] > 0


def test_online_memory_and_the_store_come_from_the_same_forward_pass(store_path, tmp_path):
    """Before training, the online baseline's memory of the retrieved neighbours is what `encode` stored."""
    trainer = Trainer(options(store_path, tmp_path / "online", rag_mode="online"))
    trainer.model.eval()
    batches = trainer.builder()
    ids, window = np.arange(8), 2
    batch = batches.build(0, window, ids)
    neighbours = batch.neighbour_ids
    with torch.no_grad():
        online = trainer.model.online_memory(batch.neighbour_tokens, batch.af, batch.valid)
    stored = open_store(store_path).read_neighbours(window, neighbours.reshape(-1)).values
    n = int(trainer.store.plan.lengths[window])
    np.testing.assert_allclose(online.reshape(stored.shape)[:, :n].numpy(), stored[:, :n].astype(np.float32),
                               rtol=1e-2, atol=2e-3)


def test_validation_scores_what_impute_would_write(store_path, tmp_path, monkeypatch, one_thread):
    """The trainer validates through the same Imputer that `ragtrain impute` loads from the checkpoint, at any
    batch size: also where the copying model's memory budget makes the batches smaller. (Bit for bit on one
    thread; on more, a product's sums may split differently by batch size, by ~1e-8.)"""
    trainer = Trainer(options(store_path, tmp_path / "run", max_steps=6, eval_every=6))
    trainer.run()
    loaded = Imputer.load(tmp_path / "run" / "last.pt", trainer.store, torch.device("cpu"), batch_size=16)
    assert loaded.retrieval == trainer.retrieval and loaded.stitch == "average"
    validation = trainer.imputer.probabilities(trainer.val_queries, show_progress=False)
    np.testing.assert_array_equal(loaded.probabilities(trainer.val_queries, show_progress=False), validation)
    assert loaded.batch_rows(trainer.val_queries) == 16
    steps = int((trainer.val_queries.alleles >= 0).sum(axis=1).max())  # a span holds the whole panel here
    states = min(2 * loaded.retrieval.states, trainer.store.n_haplotypes)
    monkeypatch.setattr(impute_module, "COPYING_BYTES", 3 * 4 * steps * states)
    assert loaded.batch_rows(trainer.val_queries) == 3
    np.testing.assert_array_equal(loaded.probabilities(trainer.val_queries, show_progress=False), validation)
    hidden = trainer.val_hidden[0]
    assert hidden.any() and (trainer.val_queries.alleles[0][hidden] == -1).all()
    assert (trainer.val_queries.alleles[0][~hidden] == trainer.val_truth[0][~hidden]).all()


def test_killed_fit_resumes_to_the_uninterrupted_weights(store_path, tmp_path, one_thread):
    """SIGKILL at a random step (a checkpoint every step), then `--resume`: the same weights as a run that was
    never stopped."""
    args = ["fit", "--store", store_path, "--device", "cpu", "--batch-size", "16", "--k", "4", "--retrieval-flank",
            "0", "--max-steps", "40", "--eval-every", "1", "--warmup", "5", "--lr", "3e-3", "--seed", "5"]
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ragtrain.cli", *args, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 240
        while not (killed / "last.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "fit ended or stalled before a checkpoint"
            time.sleep(0.01)
        time.sleep(random.uniform(0.0, 0.5))
    finally:
        proc.kill()
        proc.wait(timeout=60)
    stopped_at = torch.load(killed / "last.pt", weights_only=True)["progress"]["step"]
    assert 1 <= stopped_at < 40, stopped_at
    runner = CliRunner()
    assert runner.invoke(app, [*args, "--out", str(killed), "--resume"]).exit_code == 0
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "straight")]).exit_code == 0
    resumed = torch.load(killed / "last.pt", weights_only=True)["model"]
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    for name, tensor in straight.items():
        assert torch.equal(tensor, resumed[name]), name


def test_targets_mask_exactly_the_sites_the_target_does_not_type(panel_vcf, store_path, tmp_path):
    """--targets: training and validation hide every site but the target's typed ones, as impute will."""
    from test_failures import subset

    target = subset(panel_vcf, tmp_path / "target.vcf.gz", every=7)
    trainer = Trainer(options(store_path, tmp_path / "run", targets=str(target), max_steps=2, eval_every=2))
    store = open_store(store_path)
    with gzip.open(target, "rt") as handle:
        positions = [int(line.split("\t")[1]) for line in handle if not line.startswith("#")]
    typed = np.isin(store.positions, positions)
    assert trainer.typed.tolist() == typed.tolist() and 0 < typed.sum() < typed.size
    batches = trainer.builder()
    for window in (0, 3):
        hidden = batches.masks(0, window, np.arange(5))
        span = batches.key_span(window)
        assert (hidden == ~typed[span]).all()
    assert (trainer.val_hidden == ~typed).all()
    trainer.run()


def test_pretrain_lowers_the_masked_allele_loss_and_writes_an_encoder(store_path, panel_vcf, tmp_path):
    """`ragtrain pretrain`: the BERT alone learns masked alleles (validation loss falls), and its encoder.pt
    re-encodes the panel into a store that fit accepts with that encoder."""
    from ragprep.encode import encode
    from ragtrain.fit import pretrain
    from tests.conftest import tiny_options

    short = options(store_path, tmp_path / "short", max_steps=2, eval_every=2, mask="random:0.3-0.8",
                    val_mask="random:0.5-0.5")
    long = options(store_path, tmp_path / "long", max_steps=80, eval_every=80, mask="random:0.3-0.8",
                   val_mask="random:0.5-0.5")
    first, _ = pretrain(short)
    trained, encoder = pretrain(long)
    assert trained.last_metrics["val_loss"] < first.last_metrics["val_loss"] - 0.02
    store = str(tmp_path / "trained.zarr")
    encode(str(panel_vcf), store, tiny_options(encoder=str(encoder)))
    assert open_store(store).meta.encoder_source == str(encoder)
    assert fit(options(store, tmp_path / "fit", max_steps=2, eval_every=2, encoder=str(encoder))).steps == 2


def test_one_copying_pass_a_segment_gives_each_window_what_its_own_pass_gives(store_path):
    """Where every window's span is the whole panel, a pass per window and one pass for the whole panel (a segment
    holding every window) give every window the same P(ALT), neighbours and copying weights, bit for bit; within a
    segment, later windows of the same queries read the first window's pass instead of running their own."""
    store = open_store(store_path)
    haps = store.alleles()
    queries = panel_queries(haps, split_samples(haps.shape[0] // 2, 0.2, seed=1)[0])
    ids, whole = np.arange(12), store.plan.n_sites
    typed = np.zeros(whole, dtype=bool)
    typed[::5] = True
    def builder_for(**spans) -> BatchBuilder:
        return BatchBuilder(store, haps, queries, retrieval=RetrievalSpec(k=4, states=40, **spans),
                            rag_mode="precomputed", typed=typed)

    segment = builder_for(flank=0, segment=10**6)
    built = {"segment": [], "window": []}
    passes = set()
    for window in range(store.n_windows):
        built["segment"].append(segment.build(0, window, ids))
        passes.add(id(segment._pass))
        built["window"].append(builder_for(flank=whole, segment=0).build(0, window, ids))  # a pass of its own
    assert len(passes) == 1
    for one, per_window in zip(built["segment"], built["window"]):
        for field in ("copy_prob", "neighbour_weight", "memory"):
            assert torch.equal(getattr(one, field), getattr(per_window, field))
        np.testing.assert_array_equal(one.neighbour_ids, per_window.neighbour_ids)


def test_panel_alleles_read_a_span_at_a_time_equal_the_whole_panel(store_path):
    """Impute reads the panel one key span at a time (bounded memory); a window inside the span last read is a
    view of it, not a new read; every span equals the whole panel's columns."""
    store = open_store(store_path)
    whole = store.alleles()
    panel = PanelAlleles(store)
    plan = store.plan
    for window in range(plan.n_windows):
        key = plan.key_span(window, 40, 0)
        span = panel.span(key)
        np.testing.assert_array_equal(span, whole[:, key])
        inside = panel.span(plan.sites(window))
        assert np.shares_memory(inside, span)
        np.testing.assert_array_equal(inside, whole[:, plan.sites(window)])
    assert panel._alleles.shape[1] < whole.shape[1]  # never the whole panel at once


def test_an_epoch_visits_every_window_and_query_once_a_block_of_queries_over_a_few_windows_in_a_row(store_path):
    """Each (window, query) once an epoch; a block of queries takes WINDOWS_A_PASS windows of one segment in a
    row, so one copying pass serves them (with --targets every window observes the same sites)."""
    plan = open_store(store_path).plan
    items = epoch_plan(plan, 200, 37, 8, seed=3, epoch=1)
    pairs = [(w, int(q)) for w, ids in items for q in ids]
    assert len(pairs) == len(set(pairs)) == plan.n_windows * 37
    runs = [items[0]]
    for item in items[1:]:
        if np.array_equal(item[1], runs[-1][1]) and (plan.segment_windows(item[0], 200)
                                                     == plan.segment_windows(runs[-1][0], 200)):
            runs.append(item)
        else:
            break
    assert len(runs) == min(WINDOWS_A_PASS, len(plan.segment_windows(items[0][0], 200)))
    assert items != epoch_plan(plan, 200, 37, 8, seed=3, epoch=2)


def test_targets_training_reuses_one_copying_pass_for_a_block_over_its_windows(store_path, tmp_path):
    typed = np.zeros(open_store(store_path).plan.n_sites, dtype=bool)
    typed[::4] = True
    trainer = Trainer(options(store_path, tmp_path / "run", retrieval=RetrievalSpec(k=4, flank=0)))
    trainer.typed = typed
    builder = trainer.builder()
    passes = []
    for epoch, window, ids, _ in itertools.islice(trainer.train_items(), WINDOWS_A_PASS):
        builder.build(epoch, window, ids)
        passes.append(id(builder._pass))
    assert len(set(passes)) == 1


def test_a_querys_copying_model_does_not_depend_on_the_queries_beside_it(store_path):
    """Each query's states (its nearest and each window's local nearest) and switch rate are its own: the same
    P(ALT), neighbours and weights whether it is built with every other query or in a batch of three."""
    store = open_store(store_path)
    haps = store.alleles()
    queries = panel_queries(haps, split_samples(haps.shape[0] // 2, 0.2, seed=1)[0])
    spec = RetrievalSpec(k=4, states=12, local_states=4, local_flank=5)
    typed = np.zeros(store.plan.n_sites, dtype=bool)
    typed[::3] = True

    def build(ids):
        return BatchBuilder(store, haps, queries, retrieval=spec, rag_mode="precomputed", typed=typed).build(0, 3, ids)

    together = build(np.arange(24))
    assert together.neighbour_ids.shape == (24, 4)
    for part in (np.arange(3), np.arange(9, 12), np.arange(21, 24)):
        alone = build(part)
        np.testing.assert_array_equal(alone.copy_prob.numpy(), together.copy_prob.numpy()[part])
        np.testing.assert_array_equal(alone.neighbour_ids, together.neighbour_ids[part])
        np.testing.assert_array_equal(alone.neighbour_weight.numpy(), together.neighbour_weight.numpy()[part])


def test_network_and_builder_share_the_cores_on_the_cpu():
    """Inside fit, torch's threads are halved (the builder runs beside the training step) and given back after;
    a CUDA run keeps them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        with cores_shared(torch.device("cpu")):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 4
        with cores_shared(torch.device("cuda")):
            assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(threads)
