"""`torchrun` on the CPU (gloo): real processes, real process groups. Two ranks must give what one gives."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_CLI, assert_stores_equal

from stores import UserError, open_store

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
FIT = ["--device", "cpu", "--k", "4", "--retrieval-flank", "0", "--warmup", "2", "--lr", "3e-3", "--seed", "5",
       "--val-fraction", "0.2", "--val-mask", "array:4:0.05"]


def torchrun(*args, ranks: int = 2, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-port",
               str(29500 + os.getpid() % 1000), "-m", *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300, check=False)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def one(*args) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_rank_encode_equals_one_process_bit_for_bit(panel_vcf, store_path, tmp_path):
    out = tmp_path / "two.zarr"
    torchrun("ragprep.cli", "encode", panel_vcf, "--out", out, *TINY_CLI)
    assert_stores_equal(str(out), store_path)


def test_hand_run_shards_started_together_do_not_race(panel_vcf, store_path, tmp_path):
    out = tmp_path / "shards.zarr"
    procs = [subprocess.Popen([sys.executable, "-m", "ragprep.cli", "encode", str(panel_vcf), "--out", str(out),
                               *TINY_CLI, "--shard", f"{i}/2"], env=ENV, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert_stores_equal(str(out), store_path)


def metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_two_ranks_of_batch_8_train_as_one_process_of_batch_16_and_resume(store_path, tmp_path):
    one("ragtrain.cli", "fit", "--store", store_path, "--out", tmp_path / "one", "--batch-size", "16",
        "--max-steps", "12", "--eval-every", "6", *FIT)
    torchrun("ragtrain.cli", "fit", "--store", store_path, "--out", tmp_path / "two", "--batch-size", "8",
             "--max-steps", "12", "--eval-every", "6", "--stop-after", "6", *FIT)
    torchrun("ragtrain.cli", "fit", "--store", store_path, "--out", tmp_path / "two", "--batch-size", "8",
             "--max-steps", "12", "--eval-every", "6", "--resume", *FIT)
    single, double = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [row["step"] for row in double] == ["6", "12"]  # rank 0 alone wrote, once an evaluation
    for a, b in zip(single, double):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-3)
        assert float(a["r2_all"]) == pytest.approx(float(b["r2_all"]), abs=1e-3)
    weights = [torch.load(tmp_path / run / "last.pt", weights_only=True)["model"] for run in ("one", "two")]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=1e-3, atol=1e-4)


def test_a_killed_rank_fails_the_run_and_leaves_the_store_incomplete(panel_vcf, tmp_path):
    out = tmp_path / "killed.zarr"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(29700 + os.getpid() % 200), "-m", "ragprep.cli", "encode", str(panel_vcf), "--out", str(out),
               *TINY_CLI, "--batch-size", "1", "--stride", "2"]  # ~245 windows: still encoding when killed
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "window_done" / "c" / "0").exists():  # rank 0 wrote its first window
            assert proc.poll() is None and time.monotonic() < deadline, "encode ended or stalled early"
            time.sleep(0.05)
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=True).stdout.split()
        os.kill(int(workers[-1]), signal.SIGKILL)
        assert proc.wait(timeout=120) != 0
    finally:
        proc.kill()
    assert "failed" in proc.stderr.read().lower()
    with pytest.raises(UserError, match="incomplete"):
        open_store(str(out))
