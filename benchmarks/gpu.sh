#!/usr/bin/env bash
# One-call GPU benchmark of ragsnv (docs/benchmarks.md, "Running the GPU benchmark").
#
# On the lent GPU machine, from the repository root, with .whl/ and benchmarks/data/ carried:
#   bash benchmarks/gpu.sh                     # results in $OUT: gpu-bench.{md,json,log}, research-cuda.{md,json}
# CPU rehearsal on a tiny panel and the tiny config (panel: `benchmarks/prepare.sh tiny`):
#   GPU_BENCH_DEVICE=cpu GPU_BENCH_SIZE=tiny GPU_BENCH_INSTALL=0 GPU_BENCH_PYTHON=.venv/bin/python \
#     OUT=/tmp/gpuout bash benchmarks/gpu.sh
#
# Parts, each bounded by `timeout` and by one deadline for the whole script (GPU_BENCH_DEADLINE seconds,
# default 420); a part that fails or runs out of time is recorded and the next one runs:
#   env        nvidia-smi, torch, CUDA, device; then the carried wheels installed and imported
#   step       ragtrain bench --suites step: precomputed, online, none x k at batch 64 (research config)
#   encode-*   research encoder over the carried panel into a zstd and a raw (memory-mapped) store
#   fit-*      short fit on each store (--targets, torch retrieval, WORKERS batch-building processes): steps/s,
#              data wait, validation r2; fit-zstd-thread: the same with batches built in one thread
#   impute-copying  impute the held-out targets with the copying model alone (`--model copying`): the
#              engine's genotypes/s on the device and its stage split
#   impute-unphased  the same from the targets unphased (`ragprep unphase`): phasing's time on the device
#   impute-*   impute the held-out targets: genotypes/s and the stage split
#   maxbatch   ragtrain bench --suites maxbatch: largest batch per mode at the largest k (the time left)
#   report     gpu-bench.json and gpu-bench.md from all of the above
set -u

START=$(date +%s)
OUT=${OUT:?set OUT to the folder the results go to}
DEVICE=${GPU_BENCH_DEVICE:-cuda}
SIZE=${GPU_BENCH_SIZE:-research}
PY=${GPU_BENCH_PYTHON:-python3}
WHEELS=${GPU_BENCH_WHEELS:-.whl}
SITE=${GPU_BENCH_SITE:-/tmp/site}
DEADLINE=${GPU_BENCH_DEADLINE:-420}
REPORT_RESERVE=15  # seconds kept for the report
if [ "$SIZE" = tiny ]; then
    CONFIG=tiny K=1,2 BATCH=4 FIT_STEPS=3 FIT_BATCH=8 MAX_BATCH=16 CASE_TIMEOUT=120 WORKERS=2
    DATA=${GPU_BENCH_DATA:-benchmarks/data-tiny}
    BUDGET_STEP=150 BUDGET_ENCODE=60 BUDGET_FIT=90 BUDGET_IMPUTE=60
else
    CONFIG=research K=1,4,8 BATCH=64 FIT_STEPS=100 FIT_BATCH=64 MAX_BATCH=4096 CASE_TIMEOUT=60 WORKERS=8
    DATA=${GPU_BENCH_DATA:-benchmarks/data}
    BUDGET_STEP=200 BUDGET_ENCODE=60 BUDGET_FIT=90 BUDGET_IMPUTE=45
fi
PANEL=$DATA/panel.vcf.gz
mkdir -p "$OUT"
WORK=${GPU_BENCH_WORK:-$(mktemp -d /tmp/gpu-bench.XXXXXX)}
mkdir -p "$WORK"
: > "$WORK/parts.tsv"

left() { echo $(( DEADLINE - ($(date +%s) - START) - REPORT_RESERVE )); }

# part NAME BUDGET_S COMMAND...: run COMMAND within min(BUDGET_S, time left); record ok, failed (exit N),
# timeout or skipped in parts.tsv.
part() {
    local name=$1 budget=$2 limit started rc status
    shift 2
    limit=$(left)
    (( budget < limit )) && limit=$budget
    if (( limit < 10 )); then
        echo "=== $name: skipped (no time left)"
        printf '%s\tskipped (no time left)\t0\n' "$name" >> "$WORK/parts.tsv"
        return 1
    fi
    echo "=== $name (at most ${limit} s): $*"
    started=$(date +%s)
    timeout -k 10 "$limit" "$@"
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status="timeout after ${limit} s" ;;
        *) status="failed (exit $rc)" ;;
    esac
    echo "=== $name: $status"
    printf '%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - started ))" >> "$WORK/parts.tsv"
    [ $rc = 0 ]
}

environment() {
    echo "date: $(date -u +%FT%TZ); host cores: $(nproc); size: $SIZE; device: $DEVICE; work: $WORK"
    command -v nvidia-smi >/dev/null && nvidia-smi
    "$PY" - <<'EOF'
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}, torch threads {torch.get_num_threads()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device: {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}, "
          f"{p.multi_processor_count} SMs, bf16 {torch.cuda.is_bf16_supported()}")
else:
    print("device: no CUDA device")
EOF
}

install_wheels() {
    local wheels=("$WHEELS"/*.whl) wheel
    # cyvcf2, zarr and numcodecs need numpy 2: add the carried one where the machine's is older (or absent)
    if ! "$PY" -c 'import numpy, sys; sys.exit(int(numpy.__version__.split(".")[0]) < 2)' 2>/dev/null; then
        echo "no numpy 2 here: installing the carried one too"
        wheels+=("$WHEELS"/fallback/numpy-*.whl)
    fi
    if "$PY" -m pip --version >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "${wheels[@]}"
    else  # these wheels hold no .data folders: unpacking one is installing it
        echo "no pip for $PY: unpacking the wheels into $SITE"
        mkdir -p "$SITE" && for wheel in "${wheels[@]}"; do "$PY" -m zipfile -e "$wheel" "$SITE" || return 1; done
    fi
}

imports() {
    "$PY" - <<'EOF'
import ragprep.cli, ragtrain.cli, ragtrain.bench, stores  # noqa: F401 - what the GPU path imports
import sys
from importlib.metadata import version
names = ("numpy", "zarr", "numcodecs", "cyvcf2", "pysam", "typer", "rich")
print("imports: " + ", ".join(f"{n} {version(n)} ({sys.modules[n].__file__.rsplit('/', 2)[0]})" for n in names
                              if __import__(n)))
absent = [n for n in ("msprime", "stdpopsim", "tskit", "faiss") if n in sys.modules]
print(f"modules not wanted on the GPU path, imported: {absent or 'none'}")
EOF
}

export -f environment install_wheels imports
export PY WHEELS SITE SIZE DEVICE WORK

main() {
    part env 60 bash -o pipefail -c 'environment 2>&1 | tee "$WORK/env.txt"'
    if [ "${GPU_BENCH_INSTALL:-1}" = 1 ]; then
        part install 120 bash -c install_wheels
        export PYTHONPATH=$SITE:$PWD
    else
        export PYTHONPATH=$PWD
    fi
    part imports 60 bash -o pipefail -c 'imports 2>&1 | tee -a "$WORK/env.txt"'

    part step "$BUDGET_STEP" "$PY" -m ragtrain.cli bench --config "$CONFIG" --suites step \
        --modes precomputed,online,none --k "$K" --batch "$BATCH" --device "$DEVICE" --timeout "$CASE_TIMEOUT" \
        --out "$WORK/step"

    if [ -f "$PANEL" ]; then
        for compressor in zstd none; do
            part "encode-$compressor" "$BUDGET_ENCODE" "$PY" benchmarks/gpu_pipeline.py encode --work "$WORK" \
                --panel "$PANEL" --config "$CONFIG" --compressor "$compressor" --device "$DEVICE"
        done
        # the copying model alone on the device (the engine every fit and impute runs): genotypes/s, stages
        part "impute-copying" "$BUDGET_IMPUTE" "$PY" benchmarks/gpu_pipeline.py impute --work "$WORK" \
            --panel "$PANEL" --compressor zstd --label copying --copying --device "$DEVICE"
        # the same from unphased targets: phasing on the device (its stage in the split)
        part "impute-unphased" "$BUDGET_IMPUTE" "$PY" benchmarks/gpu_pipeline.py impute --work "$WORK" \
            --panel "$PANEL" --compressor zstd --label copying-unphased --copying --unphased --device "$DEVICE"
        for compressor in zstd none; do
            part "fit-$compressor" "$BUDGET_FIT" "$PY" benchmarks/gpu_pipeline.py fit --work "$WORK" \
                --panel "$PANEL" --compressor "$compressor" --fit-steps "$FIT_STEPS" --fit-batch "$FIT_BATCH" \
                --device "$DEVICE" --workers "$WORKERS" &&
            part "impute-$compressor" "$BUDGET_IMPUTE" "$PY" benchmarks/gpu_pipeline.py impute --work "$WORK" \
                --panel "$PANEL" --compressor "$compressor" --device "$DEVICE" --workers "$WORKERS"
        done
        # the same fit with batches built in one thread (workers 0): what the workers buy in data wait
        part "fit-zstd-thread" "$BUDGET_FIT" "$PY" benchmarks/gpu_pipeline.py fit --work "$WORK" --panel "$PANEL" \
            --compressor zstd --label zstd-thread --fit-steps "$(( FIT_STEPS / 2 ))" --fit-batch "$FIT_BATCH" \
            --device "$DEVICE" --workers 0
    else
        echo "=== no panel at $PANEL (benchmarks/prepare.sh makes it; carry its folder): encode, fit, impute skipped"
        printf 'encode/fit/impute\tskipped (no panel at %s)\t0\n' "$PANEL" >> "$WORK/parts.tsv"
    fi

    local budget=$(( $(left) - 15 ))  # the last probe may start just before the budget ends
    part maxbatch 600 "$PY" -m ragtrain.cli bench --config "$CONFIG" --suites maxbatch \
        --modes precomputed,online,none --k "$K" --batch "$BATCH" --device "$DEVICE" --timeout "$CASE_TIMEOUT" \
        --max-batch "$MAX_BATCH" --max-batch-budget "$(( budget > 0 ? budget : 0 ))" --out "$WORK/maxbatch"

    cp "$WORK"/step/*.json "$WORK"/step/*.md "$OUT"/ 2>/dev/null
    REPORT_RESERVE=0 part report 30 "$PY" benchmarks/gpu_pipeline.py report --work "$WORK" --out "$OUT"
    echo "=== done in $(( $(date +%s) - START )) s; results in $OUT:"
    ls -la "$OUT"
}

main 2>&1 | tee "$OUT/gpu-bench.log"
