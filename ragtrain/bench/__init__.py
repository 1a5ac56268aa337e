"""`ragtrain bench`: memory, speed, store size and accuracy cost, measured. Kept out of the trainer's import path:
it imports `ragtrain.fit`, never the other way."""

from ragtrain.bench.suites import CONFIGS, SUITES, BenchOptions, BenchResults, run_bench, run_step_case

__all__ = ["CONFIGS", "SUITES", "BenchOptions", "BenchResults", "run_bench", "run_step_case"]
