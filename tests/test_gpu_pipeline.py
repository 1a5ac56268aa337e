"""benchmarks/gpu_pipeline.py (the stages of benchmarks/gpu.sh) end to end on a tiny panel, on the CPU."""

from __future__ import annotations

import importlib.util
import json
from argparse import Namespace
from pathlib import Path

from conftest import torch_threads

from ragprep.simulate import simulate_split

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_pipeline.py"


def load_pipeline():
    spec = importlib.util.spec_from_file_location("gpu_pipeline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stages_add_rows_and_the_report_gathers_every_part(tmp_path):
    pipeline = load_pipeline()
    paths = simulate_split(tmp_path / "panel.vcf.gz", samples=30, holdout=4, length=2e4, seed=1)
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    common = {"work": work, "panel": paths["panel"], "target": paths["target"], "config": "tiny", "device": "cpu",
              "fit_steps": 2, "fit_batch": 8, "workers": 0}
    with torch_threads(1):
        for compressor in ("zstd", "none"):
            args = Namespace(**common, compressor=compressor, label=compressor, copying=False)
            pipeline.encode_stage(args)
            pipeline.fit_stage(args)
            pipeline.impute_stage(args)
        pipeline.impute_stage(Namespace(**common, compressor="zstd", label="copying", copying=True))
        pipeline.impute_stage(Namespace(**common, compressor="zstd", label="unphased", copying=True, unphased=True))
    (work / "parts.tsv").write_text("encode-zstd\tok\t3\nfit-none\ttimeout after 90 s\t90\n")
    out.mkdir()
    pipeline.report(Namespace(work=work, out=out))

    data = json.loads((out / "gpu-bench.json").read_text())
    assert data["parts"][1] == {"part": "fit-none", "status": "timeout after 90 s", "seconds": 90.0}
    assert data["step"] is None and data["maxbatch"] is None
    encode = data["pipeline"]["encode"]
    assert encode["none"]["mmap"] is True and encode["zstd"]["mmap"] is False
    assert encode["zstd"]["bytes_on_disk"] < encode["none"]["bytes_on_disk"]
    for compressor in ("zstd", "none"):
        assert data["pipeline"]["fit"][compressor]["steps"] == 2
        assert 0.0 <= data["pipeline"]["fit"][compressor]["data_wait"] <= 1.0
        assert data["pipeline"]["impute"][compressor]["genotypes_per_s"] > 0
    copying = data["pipeline"]["impute"]["copying"]
    assert copying["genotypes_per_s"] > 0 and copying["stages"]["copying model"] > 0
    phasing = data["pipeline"]["impute"]["unphased"]["stages"]["phasing"]
    assert phasing > 0.001 and phasing > 10 * copying["stages"]["phasing"]  # nothing to phase: nothing done
    text = (out / "gpu-bench.md").read_text()
    assert "| fit-none | timeout after 90 s | 90 |" in text
    assert "| zstd | False |" in text and "| none | True |" in text
    assert "| none | 2 | 8 |" in text
