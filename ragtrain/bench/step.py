"""One training-step measurement, in its own process so that memory peaks of different cases never mix.

`python -m ragtrain.bench.step '{"bert": {...}, "mode": "online", "k": 8, "batch": 64, ...}'` prints one JSON
line: peak memory (CUDA max allocated and reserved; peak RSS on CPU), the median time of a full step (batch to
device, forward, backward, clipping, AdamW) after warm-up, and query tokens per second. Running out of memory
is a result ({"status": "oom"}), not a crash.

Batches are synthetic but shaped and typed as `ragtrain fit` builds them (stored memory float16 on the host,
moved to the device every step), so the step is measured apart from the store and retrieval; the data
pipeline has its own benchmark (`ragtrain.bench`).
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from ragprep.encode import resolve_device
from ragprep.model import ALT, MASK, BertConfig
from ragtrain.data import IGNORE, Batch
from ragtrain.fit import train_step
from ragtrain.hmm import WEIGHT_BUCKETS
from ragtrain.model import ModelConfig, RagImputer
from ragtrain.retrieval import MATCH_BUCKETS, RetrievalSpec


@dataclass
class StepCase:
    bert: BertConfig
    mode: str
    k: int
    batch: int
    warmup: int = 3
    steps: int = 10
    device: str = "auto"
    seed: int = 0
    memory_limit_gb: float | None = None  # cap this process (CUDA: memory fraction; CPU: address space)
    mask_fraction: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> StepCase:
        return cls(**{**data, "bert": BertConfig.from_dict(data["bert"])})


@dataclass
class StepResult:
    status: str  # ok | oom | error | killed | timeout
    device: str = ""
    median_step_s: float | None = None
    tokens_per_s: float | None = None
    peak_allocated_mb: float | None = None  # CUDA only
    peak_reserved_mb: float | None = None  # CUDA only
    peak_rss_mb: float | None = None
    baseline_rss_mb: float | None = None  # RSS before the model was built
    parameters: int | None = None
    step_times_s: list[float] = field(default_factory=list)
    detail: str = ""


def synthetic_batch(case: StepCase, generator: torch.Generator) -> Batch:
    """A host batch as `BatchBuilder` makes it: full windows, `mask_fraction` of query sites hidden."""
    b, k, length, d_mem = case.batch, case.k, case.bert.window, case.bert.d_memory
    alleles = torch.randint(0, 2, (b, length), generator=generator)
    hidden = torch.rand(b, length, generator=generator) < case.mask_fraction
    batch = Batch(window=0, query_ids=torch.arange(b).numpy(),
                  tokens=torch.where(hidden, MASK, alleles),
                  af=torch.rand(length, generator=generator).expand(b, -1).contiguous(),
                  valid=torch.ones(b, length, dtype=torch.bool),
                  labels=torch.where(hidden, alleles, IGNORE),
                  copy_prob=torch.rand(b, length, generator=generator))
    if case.mode != "none":
        batch.neighbour_tokens = torch.randint(0, ALT + 1, (b, k, length), generator=generator)
        batch.neighbour_match = torch.randint(0, MATCH_BUCKETS, (b, k, length), generator=generator)
        batch.neighbour_weight = torch.randint(0, WEIGHT_BUCKETS, (b, k, length), generator=generator)
    if case.mode == "precomputed":
        batch.memory = torch.randn(b, k, length, d_mem, generator=generator).to(torch.float16)
    return batch


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _limit_memory(case: StepCase, device: torch.device) -> None:
    if case.memory_limit_gb is None:
        return
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, case.memory_limit_gb * 2**30 / total), device)
    else:  # address space beyond what this process already maps
        with open("/proc/self/statm") as handle:
            mapped = int(handle.read().split()[0]) * resource.getpagesize()
        limit = mapped + int(case.memory_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, (torch.OutOfMemoryError, MemoryError)) or "can't allocate memory" in str(err)


def measure_step(case: StepCase) -> StepResult:
    """Build the model, run warm-up then timed steps; peaks and the median step time."""
    device = resolve_device(case.device)
    result = StepResult(status="ok", device=describe_device(device), baseline_rss_mb=_rss_mb())
    torch.manual_seed(case.seed)
    generator = torch.Generator().manual_seed(case.seed)
    config = ModelConfig(bert=case.bert, rag_mode=case.mode)
    try:
        model = RagImputer(config, RetrievalSpec(k=case.k)).to(device).train()  # retrieval as `fit` trains by default
        result.parameters = sum(p.numel() for p in model.parameters())
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        host = synthetic_batch(case, generator)
        if device.type == "cuda":
            host = host.pin_memory()
            torch.cuda.reset_peak_memory_stats(device)
        _limit_memory(case, device)
        for step in range(case.warmup + case.steps):
            started = time.perf_counter()
            train_step(model, optimizer, [host], device, clip=1.0)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step >= case.warmup:
                result.step_times_s.append(time.perf_counter() - started)
        result.median_step_s = statistics.median(result.step_times_s)
        result.tokens_per_s = case.batch * case.bert.window / result.median_step_s
    except Exception as err:  # noqa: BLE001 - out of memory is a result; anything else is reported
        result.status = "oom" if is_out_of_memory(err) else "error"
        result.detail = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
    if device.type == "cuda":
        result.peak_allocated_mb = torch.cuda.max_memory_allocated(device) / 2**20
        result.peak_reserved_mb = torch.cuda.max_memory_reserved(device) / 2**20
    result.peak_rss_mb = _rss_mb()
    return result


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def main(argv: list[str]) -> int:
    case = StepCase.from_dict(json.loads(argv[1]))
    print(json.dumps(asdict(measure_step(case))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
