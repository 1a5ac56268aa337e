"""Seeded fuzzing of the panel, target and truth VCF readers: every mutated file reads, or stops with a
UserError (the CLIs' one line and exit 2); never another exception, a crash or a hang."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import subset

CASES = 500  # a reader


def test_mutated_vcfs_read_or_fail_with_one_line(panel_vcf, store_path, tmp_path):
    valid = subset(panel_vcf, tmp_path / "valid.vcf.gz", every=16, samples=6)  # 31 records
    script = Path(__file__).with_name("fuzz_readers.py")
    done = subprocess.run([sys.executable, str(script), str(valid), store_path, str(CASES), "1", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode == 0, (done.stdout[-4000:], done.stderr[-2000:])
    assert f"{3 * CASES} cases, 0 failures" in done.stdout
