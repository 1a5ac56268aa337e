"""Smoke test of the benchmark harness at the tiny config: real processes, stores and fits; no timings asserted."""

from __future__ import annotations

import json
import math
import shutil
import time

import pytest
from conftest import torch_threads
from typer.testing import CliRunner

from ragtrain.bench import CONFIGS, BenchOptions, run_bench, run_step_case
from ragtrain.bench.step import StepCase
from ragtrain.cli import app
from ragtrain.impute import STAGES


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    with torch_threads(1):
        results, stem = run_bench(BenchOptions(config="tiny", out=str(out), modes=("precomputed", "online"),
                                               ks=(2,), device="cpu", command="pytest",
                                               suites=("step", "encode", "fit", "impute", "scale")))
    return results, stem


def test_step_cases_run_in_their_own_processes(tiny_bench):
    results, _ = tiny_bench
    assert [(row["mode"], row["k"]) for row in results.step] == [("precomputed", 2), ("online", 2)]
    for row in results.step:
        assert row["status"] == "ok", row["detail"]
        assert len(row["step_times_s"]) == CONFIGS["tiny"].step_steps
        assert row["median_step_s"] > 0 and row["tokens_per_s"] > 0
        assert row["peak_rss_mb"] >= row["baseline_rss_mb"] > 0
    # online runs the neighbours through the trainable BERT: same weights, no extra parameters
    assert results.step[0]["parameters"] == results.step[1]["parameters"]


def test_encode_suite_sizes_the_stores(tiny_bench):
    results, _ = tiny_bench
    rows = {row["name"]: row for row in results.encode}
    assert set(rows) == {"fp16-d8", "int8-d8", "fp16-d4"}
    for row in rows.values():
        assert row["haplotype_sites_per_s"] > 0 and row["bytes_on_disk"] > 0
        assert row["encoder_seconds"] + row["write_seconds"] <= row["seconds"]
    assert rows["int8-d8"]["bytes_per_haplotype_site"] < rows["fp16-d8"]["bytes_per_haplotype_site"]
    assert rows["fp16-d4"]["bytes_per_haplotype_site"] < rows["fp16-d8"]["bytes_per_haplotype_site"]


def test_fit_suite_scores_every_store_with_one_budget(tiny_bench):
    results, _ = tiny_bench
    assert [(row["store"], row["training"]) for row in results.fit] == [
        ("fp16-d8", "trained on it"), ("int8-d8", "trained on it"), ("fp16-d4", "trained on it"),
        ("int8-d8", "model trained on fp16-d8")]
    for row in results.fit[:3]:
        assert 0.0 <= row["data_wait"] <= 1.0 and row["steps_per_s"] > 0
    for row in results.fit:
        assert 0.0 <= row["val_accuracy"] <= 1.0
        assert not math.isnan(row["r2 [0.05, 0.5]"])


def test_results_written_as_strict_json_and_markdown(tiny_bench):
    _, stem = tiny_bench
    data = json.loads(stem.with_suffix(".json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert data["meta"]["config"] == "tiny" and data["meta"]["command"] == "pytest"
    assert len(data["step"]) == 2 and len(data["encode"]) == 3 and len(data["fit"]) == 4
    text = stem.with_suffix(".md").read_text()
    assert "| precomputed | 2 | 4 | 32 | ok |" in text and "| online | 2 | 4 | 32 | ok |" in text
    assert "- k = 2: precomputed steps" in text
    assert "r2 minus `fp16-d8`" in text


def test_out_of_memory_is_a_result_not_a_crash():
    case = StepCase(bert=CONFIGS["tiny"].bert, mode="online", k=8, batch=2048, warmup=1, steps=1, device="cpu",
                    memory_limit_gb=0.2)
    result = run_step_case(case, timeout_s=300)
    assert result.status == "oom", result.detail
    assert result.median_step_s is None and "allocate" in result.detail


def test_bench_cli_rejects_unknown_modes_and_shows_an_example(tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["bench", "--modes", "precomputed,offline", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown mode ['offline']" in bad.output
    assert not any(tmp_path.iterdir())
    bad_k = runner.invoke(app, ["bench", "--k", "1,x", "--out", str(tmp_path)])
    assert bad_k.exit_code == 2 and "--k: cannot read '1,x'" in bad_k.output
    shown = runner.invoke(app, ["bench", "--help"])
    assert shown.exit_code == 0 and "ragtrain bench --config research" in shown.output


def test_scale_suite_measures_every_stage_at_each_panel_size(tiny_bench):
    results, stem = tiny_bench
    assert [row["haplotypes"] for row in results.scale] == [40, 80]
    for row in results.scale:
        assert row["encode_s"] > 0 and row["fit_steps_per_s"] > 0 and row["impute_genotypes_per_s"] > 0
        assert row["haplotype_sites"] == row["haplotypes"] * row["sites"]
    assert "How cost grows with the panel" in stem.with_suffix(".md").read_text()


def test_impute_suite_reports_throughput_and_every_stage(tiny_bench):
    results, stem = tiny_bench
    rows = {row["tool"]: row for row in results.impute}
    ragsnv = rows["ragsnv"]
    assert ragsnv["genotypes_per_s"] > 0 and ragsnv["samples"] == CONFIGS["tiny"].impute_targets
    assert list(ragsnv["stages"]) == list(STAGES) and min(ragsnv["stages"].values()) >= 0
    # the stages of the main thread happen one after another: together they fit inside the wall time
    main_thread = ("read targets", "network", "stitching", "waiting for batches", "write VCF")
    assert sum(ragsnv["stages"][name] for name in main_thread) <= ragsnv["seconds"]
    assert ("beagle" in rows) == (shutil.which("beagle") is not None)
    assert "### Imputation" in stem.with_suffix(".md").read_text()


@pytest.mark.parametrize(("start", "cap", "fits_up_to", "probed", "largest", "limit"), [
    (4, 4096, 16, [4, 8, 16, 32], 16, "oom at 32"),  # doubles until a probe fails
    (64, 4096, 16, [64, 32, 16], 16, "oom at 32"),  # the start fails: halves until one runs
    (4, 16, 10**6, [4, 8, 16], 16, "cap 16"),
    (4, 4096, 0, [4, 2, 1], None, "oom at 1"),
])
def test_largest_batch_search(monkeypatch, start, cap, fits_up_to, probed, largest, limit):
    from ragtrain.bench import suites
    from ragtrain.bench.step import StepResult

    def fake(case, timeout_s):
        return StepResult(status="ok", median_step_s=0.1) if case.batch <= fits_up_to else StepResult(status="oom")

    monkeypatch.setattr(suites, "run_step_case", fake)
    case = StepCase(bert=CONFIGS["tiny"].bert, mode="online", k=2, batch=start, device="cpu")
    row = suites.largest_batch(case, cap, timeout_s=10, deadline=time.monotonic() + 60)
    assert [p["batch"] for p in row["probes"]] == probed
    assert row["largest_batch"] == largest and row["limit"] == limit
    spent = suites.largest_batch(case, cap, timeout_s=10, deadline=time.monotonic() - 1)
    assert spent["probes"] == [] and spent["largest_batch"] is None and spent["limit"] == "time budget"


def test_maxbatch_suite_runs_real_probes(tmp_path):
    with torch_threads(1):
        results, stem = run_bench(BenchOptions(config="tiny", out=str(tmp_path), modes=("precomputed", "none"),
                                               device="cpu", suites=("maxbatch",), max_batch=8))
    assert [(row["mode"], row["k"]) for row in results.maxbatch] == [("precomputed", 2), ("none", None)]
    for row in results.maxbatch:
        assert [(p["batch"], p["status"]) for p in row["probes"]] == [(4, "ok"), (8, "ok")]
        assert row["largest_batch"] == 8 and row["limit"] == "cap 8" and row["median_step_s"] > 0
    assert "| precomputed | 2 | 32 | 8 | cap 8 |" in stem.with_suffix(".md").read_text()
