"""`ragprep encode`: batch-invariant, deterministic, int8 within its bound, resumes after a kill, shards."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_CLI, assert_stores_equal, stray_entries, tiny_options, torch_threads
from typer.testing import CliRunner

from ragprep.cli import app
from ragprep.encode import distinct_haplotypes, encode, encode_window
from ragprep.model import build_bert
from stores import UserError, open_store
from stores.quantize import dequantize_int8, quantize_int8

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread is fastest


def run_cli(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


# --- one window, one batch or many ----------------------------------------------------------------------

def test_batches_do_not_change_embeddings(store_path):
    store = open_store(store_path)
    bert = build_bert(TINY, seed=3).eval()
    for window in (0, store.n_windows - 1):  # a full window and the padded last one
        alleles = store.alleles(store.plan.sites(window))
        af = store.af[store.plan.sites(window)]
        whole = encode_window(bert, alleles, af, TINY.window, batch_size=alleles.shape[0], device=CPU)
        assert whole.shape == (store.n_haplotypes, TINY.window, TINY.d_memory)
        for batch_size in (7, 50):
            parts = encode_window(bert, alleles, af, TINY.window, batch_size=batch_size, device=CPU)
            np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-6)
        ones = encode_window(bert, alleles[:12], af, TINY.window, batch_size=1, device=CPU)
        np.testing.assert_allclose(ones, whole[:12], rtol=1e-5, atol=1e-6)
        # the store holds exactly these values, rounded to fp16
        np.testing.assert_array_equal(store.read_window(window).values, whole.astype(np.float16))


def test_each_window_keeps_its_distinct_haplotypes_once_sorted_by_their_alleles(store_path):
    store = open_store(store_path)
    alleles = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 0], [1, 1, 1], [0, 1, 1]], dtype=np.int8)
    distinct, rows = distinct_haplotypes(alleles)
    np.testing.assert_array_equal(distinct, alleles[[1, 0, 3]])  # 011 < 100 < 111
    np.testing.assert_array_equal(rows, [1, 0, 1, 2, 0])
    for window in range(store.n_windows):
        window_alleles = store.alleles(store.plan.sites(window))
        rows = store.window_rows(window)
        u = int(rows.max()) + 1
        assert u == np.unique(window_alleles, axis=0).shape[0] < store.n_haplotypes  # one row each, fewer than H
        for row in range(u):  # every haplotype of a row carries the same alleles
            assert (window_alleles[rows == row] == window_alleles[rows == row][0]).all()


# --- int8 -----------------------------------------------------------------------------------------------

def test_int8_error_is_at_most_half_a_scale():
    """|dequantised - x| <= scale / 2 a element (plus float32 rounding: factor 1.00004), at any magnitude."""
    rng = np.random.default_rng(1)
    magnitudes = 10.0 ** rng.uniform(-9, 3, size=(4000, 1))
    x = (rng.normal(size=(4000, 8)) * magnitudes).astype(np.float32)
    x[:10] = 0.0  # all-zero vectors: scale 0, exact
    q, scale = quantize_int8(x)
    assert q.dtype == np.int8 and scale.dtype == np.float16 and scale.shape == (4000,)
    assert np.abs(q.astype(int)).max() <= 127
    bound = scale.astype(np.float32)[:, None] * 0.50002
    error = np.abs(dequantize_int8(q, scale) - x)
    assert np.all(error <= bound), float((error - bound).max())
    assert np.all(dequantize_int8(q[:10], scale[:10]) == 0)
    window = x.reshape(50, 80, 8)  # one scale a site, shared by 50 haplotypes (as a format 2 store keeps them)
    q, scale = quantize_int8(window, shared=(0,))
    assert scale.shape == (80,) and np.abs(q.astype(int)).max() == 127
    error = np.abs(dequantize_int8(q, np.broadcast_to(scale, (50, 80))) - window)
    assert np.all(error <= scale.astype(np.float32)[None, :, None] * 0.50002)


def test_int8_store_reads_back_close_to_the_fp16_store(store_path, int8_store_path):
    fp16, int8 = open_store(store_path), open_store(int8_store_path)
    assert int8.meta.memory_dtype == "int8" and int8.meta.encoder_fingerprint == fp16.meta.encoder_fingerprint
    for window in range(fp16.n_windows):
        block = int8.read_window(window)
        assert block.values.dtype == np.int8 and block.scales.shape == block.values.shape[:2]
        reference = fp16.read_window(window).dequantize()
        # both round the same fp32 embedding: int8 by <= scale/2, fp16 by <= 2^-11 relative
        bound = block.scales.astype(np.float32)[..., None] * 0.50002 + np.abs(reference) * 2.0**-10
        assert np.all(np.abs(block.dequantize() - reference) <= bound)
    assert 0 < int8.bytes_on_disk() < fp16.bytes_on_disk()


# --- determinism ----------------------------------------------------------------------------------------

def test_same_vcf_same_seed_same_store(panel_vcf, store_path, tmp_path):
    again = str(tmp_path / "again.zarr")
    encode(str(panel_vcf), again, tiny_options())
    assert_stores_equal(store_path, again)
    # and a re-run on the finished store has nothing left to do
    report = encode(str(panel_vcf), again, tiny_options())
    assert report.windows_encoded == 0 and report.windows_done == report.windows_total
    assert_stores_equal(store_path, again)


def test_another_seed_is_another_encoder(panel_vcf, store_path, tmp_path):
    other = str(tmp_path / "other.zarr")
    encode(str(panel_vcf), other, tiny_options(seed=4))
    a, b = open_store(store_path), open_store(other)
    assert a.meta.encoder_fingerprint != b.meta.encoder_fingerprint
    assert not np.array_equal(a.read_window(0).values, b.read_window(0).values)
    with pytest.raises(UserError, match=r"exists with other settings \(encoder_fingerprint"):
        encode(str(panel_vcf), other, tiny_options())  # resuming with another encoder is refused


# --- resume after a kill --------------------------------------------------------------------------------

def windows_done(out: Path) -> np.ndarray | None:
    """The store's window_done array, or None while there is no readable store yet."""
    try:
        return open_store(str(out), require_complete=False).windows_done()
    except Exception:  # noqa: BLE001 - not created yet, or a chunk caught mid-write
        return None


def test_killed_encode_resumes_to_the_uninterrupted_result(panel_vcf, tmp_path):
    # batch size 1 on one thread: a few seconds for the whole panel, so the run can be caught midway
    args = ["encode", str(panel_vcf), *TINY_CLI, "--batch-size", "1"]
    out = tmp_path / "killed.zarr"
    command = [sys.executable, "-m", "ragprep.cli", *args, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 240
            while True:
                done = windows_done(out)
                if done is not None and done.any():
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    log_text = (tmp_path / "killed.log").read_text()
                    pytest.fail(f"encode ended or stalled before a window was done:\n{log_text}")
                time.sleep(0.01)
        finally:
            proc.kill()
            proc.wait(timeout=60)

    done = windows_done(out)
    assert done is not None and 1 <= done.sum() < done.size, f"{done.sum()} of {done.size} windows done"
    with pytest.raises(UserError, match="incomplete"):
        open_store(str(out))
    assert open_store(str(out), require_complete=False).is_complete is False
    shown = run_cli("inspect", out).stdout
    assert re.search(r"^complete\s+False$", shown, flags=re.MULTILINE), shown
    info = json.loads(run_cli("inspect", out, "--json").stdout)
    assert info["complete"] is False and info["windows_done"] == done.sum() < info["windows_total"]

    resumed = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    left = done.size - int(done.sum())
    assert f"encoded {left} windows" in resumed.stderr and "store complete" in resumed.stderr, resumed.stderr
    assert open_store(str(out)).is_complete

    reference = tmp_path / "uninterrupted.zarr"
    with torch_threads(1):  # as in the subprocess
        run_cli(*args, "--out", reference)
    assert_stores_equal(str(out), str(reference))
    assert not stray_entries(tmp_path)


# --- shards ---------------------------------------------------------------------------------------------

def test_two_shards_equal_one_run(panel_vcf, store_path, tmp_path):
    both, alone = tmp_path / "both.zarr", tmp_path / "alone.zarr"
    first = run_cli("encode", panel_vcf, *TINY_CLI, "--shard", "0/2", "--out", both)
    assert "store incomplete" in first.stderr
    n_windows = open_store(store_path).n_windows
    even = np.arange(n_windows) % 2 == 0
    np.testing.assert_array_equal(windows_done(both), even)
    with pytest.raises(UserError, match="incomplete"):
        open_store(str(both))

    run_cli("encode", panel_vcf, *TINY_CLI, "--shard", "1/2", "--out", alone)
    np.testing.assert_array_equal(windows_done(alone), ~even)
    with pytest.raises(UserError, match="incomplete"):
        open_store(str(alone))

    second = run_cli("encode", panel_vcf, *TINY_CLI, "--shard", "1/2", "--out", both)
    assert "store complete" in second.stderr
    assert_stores_equal(str(both), store_path)
    assert not stray_entries(tmp_path)


def test_genetic_map_gives_every_site_its_cm(panel_vcf, tmp_path):
    """`--genetic-map`: cM linear between map points, 1 cM/Mb beyond its ends; without one, 1 cM/Mb."""
    plain = open_store(encode_to(panel_vcf, tmp_path / "plain.zarr"))
    np.testing.assert_allclose(plain.genetic_positions(), plain.positions * 1e-6)
    gmap = tmp_path / "map.txt"
    gmap.write_text("pos\tchr\tcM\n20000\t22\t0.5\n60000\t22\t2.5\n")
    mapped = open_store(encode_to(panel_vcf, tmp_path / "mapped.zarr", genetic_map=str(gmap)))
    pos = mapped.positions.astype(float)
    expected = np.interp(pos, [20000, 60000], [0.5, 2.5])
    expected = np.where(pos < 20000, 0.5 - (20000 - pos) * 1e-6, np.where(pos > 60000, 2.5 + (pos - 60000) * 1e-6,
                                                                          expected))
    np.testing.assert_allclose(mapped.genetic_positions(), expected)
    assert mapped.meta.extra["genetic_map"]["path"] == str(gmap)
    gmap.write_text("pos\tchr\tcM\n20000\t22\t2.5\n60000\t22\t0.5\n")
    with pytest.raises(UserError, match="decrease; fix: sort the map"):
        encode(str(panel_vcf), str(tmp_path / "bad.zarr"), tiny_options(genetic_map=str(gmap)))


def encode_to(panel_vcf, out, **overrides) -> str:
    encode(str(panel_vcf), str(out), tiny_options(**overrides))
    return str(out)
