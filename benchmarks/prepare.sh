#!/usr/bin/env bash
# Make what benchmarks/gpu.sh carries to the GPU machine (both folders are git-ignored):
#   bash benchmarks/prepare.sh            # .whl/ (CPython 3.12 wheels) and benchmarks/data/ (research panel)
#   bash benchmarks/prepare.sh wheels     # .whl/ only
#   bash benchmarks/prepare.sh panel      # benchmarks/data/ only: 1,000 samples x 1 Mb + 100 held out
#   bash benchmarks/prepare.sh tiny       # benchmarks/data-tiny/: 60 samples x 100 kb (the CPU rehearsal)
# The wheels are those ragsnv needs beyond what the GPU machine has (torch, numpy, rich, typer, matplotlib),
# at the versions installed here (PY's pip freeze); no msprime, stdpopsim, tskit or faiss (the panel is
# simulated here, retrieval runs on torch). numpy goes to .whl/fallback/: gpu.sh installs it only where the
# machine's numpy is older than 2. Another Python: WHEEL_PYTHON=3.11 WHEEL_DIR=/tmp/whl311 ... wheels
set -euo pipefail

if [ -x .venv/bin/python ]; then PY=${PY:-.venv/bin/python}; else PY=${PY:-python3}; fi
WHEEL_PYTHON=${WHEEL_PYTHON:-3.12}
WHEEL_DIR=${WHEEL_DIR:-.whl}
PACKAGES="zarr numcodecs cyvcf2 pysam donfig google-crc32c typing_extensions packaging PyYAML coloredlogs humanfriendly"

pinned() {  # NAME -> NAME==VERSION as installed for PY
    local line
    line=$("$PY" -m pip freeze 2>/dev/null | grep -i "^$1==" || true)
    [ -n "$line" ] || { echo "$1 is not installed for $PY: install ragsnv there first (make install)" >&2; exit 1; }
    echo "$line"
}

download() {  # DIR NAME==VERSION
    local platforms=() n
    for n in 28 27 24 17; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$WHEEL_PYTHON" --implementation cp \
        "${platforms[@]}" --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$1" "$2"
}

wheels() {
    rm -rf "$WHEEL_DIR" && mkdir -p "$WHEEL_DIR/fallback"
    local name spec
    for name in $PACKAGES; do spec=$(pinned "$name"); download "$WHEEL_DIR" "$spec"; done
    spec=$(pinned numpy)
    download "$WHEEL_DIR/fallback" "$spec"
    for wheel in "$WHEEL_DIR"/*.whl; do
        echo "$(basename "$wheel"): $(unzip -p "$wheel" '*.dist-info/METADATA' | grep '^Requires-Dist' \
            | grep -v 'extra ==' | sed 's/Requires-Dist: //' | paste -sd, - || true)"
    done
    du -sh "$WHEEL_DIR"
}

panel() {  # DIR SAMPLES HOLDOUT LENGTH SEED
    rm -rf "$1" && mkdir -p "$1"
    PYTHONPATH=$PWD "$PY" -m ragprep.cli simulate --out "$1/panel.vcf.gz" --samples "$2" --holdout "$3" \
        --length "$4" --seed "$5"
    du -sh "$1"
}

case "${1:-all}" in
    all) wheels; panel benchmarks/data 1000 100 1e6 1 ;;
    wheels) wheels ;;
    panel) panel benchmarks/data 1000 100 1e6 1 ;;
    tiny) panel benchmarks/data-tiny 60 10 1e5 7 ;;
    *) echo "usage: bash benchmarks/prepare.sh [all|wheels|panel|tiny]" >&2; exit 2 ;;
esac
