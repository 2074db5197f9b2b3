#!/usr/bin/env bash
# GPU decode check for one short session on a CUDA machine that cannot download anything.
#
#   bash tests/helpers/gpu_session.sh prepare   # here, with network: fills .gpu/ (about 52 MiB; keep it ignored)
#   bash tests/helpers/gpu_session.sh run       # there, in the repo root, .gpu/ carried: writes $OUT/gpu_results.md
#   bash tests/helpers/gpu_session.sh node      # there, after run (same machine): writes $OUT/gpu_node.md
#
# prepare: the gpu extra's wheels for the target's CUDA major (CU=13 by default: nvidia-nvimgcodec-cu13 and
#   nvidia-nvjpeg 13.0), an FFCV 1.0.2 wheel built for the target's Python (PY_TARGET=3.12), the shared libraries
#   FFCV's extension links beyond glibc/libstdc++ (OpenCV core/imgproc and theirs, TurboJPEG) and a subset of
#   the shared ImageNet sample (SAMPLE_EVERY=2: every 2nd class, 150 images).
# run: installs the wheels into /tmp/site, runs the GPU tests (tests/test_gpu.py: delivery stress test;
#   tests/test_gpu_decode_cuda.py: decode fidelity bound, order/labels/flips, the stress test on the GPU decode path
#   and its negative control), then tests/helpers/gpu_measure.py (fidelity table for the hardware and CUDA
#   backends; throughput at 256 and 512 px, CPU path with all cores vs GPU path, cores busy). About 6 minutes
#   on a 16-core H200 machine; every step has its own timeout so the results file is always written.
# node: issue 14's node rows on the CPU decode path: jit-ffcv bench --procs 1 --workers 16 and --procs 8 --workers 2
#   at 256 and 512 px, one round each, next to a bare FFCV Loader and the honest 16-thread limit (about 5 min;
#   its own call, so a run past the device's per-call limit loses nothing of `run`).
set -u
GPU_DIR=${GPU_DIR:-.gpu}
CU=${CU:-13}
PY_TARGET=${PY_TARGET:-3.12}
SAMPLE=${SAMPLE:-${JIT_FFCV_SAMPLE:-../shared/data/imagenet-sample}}
SAMPLE_EVERY=${SAMPLE_EVERY:-2}
PY=${PY:-python3}                 # run: the interpreter that holds a CUDA build of torch
MEASURE_ARGS=${MEASURE_ARGS:-}    # run: extra gpu_measure.py options (a dry run on CPU: --sizes 64 --samples 400)
LAYOUTS=${LAYOUTS:-"1 16,8 2"}    # node: "procs workers" pairs (a dry run on CPU: LAYOUTS="1 2" SIZES=64)
SIZES=${SIZES:-"256 512"}         # node: image sizes

prepare() {
    set -e
    rm -rf "$GPU_DIR/whl" && mkdir -p "$GPU_DIR/whl" /tmp/gpu_lib
    local exclude
    exclude=$(git rev-parse --git-path info/exclude)
    grep -qx "/$GPU_DIR/" "$exclude" 2>/dev/null \
        || echo "note: add /$GPU_DIR/ to .gitignore (or $exclude) so it is never committed"
    local pip="python3 -m pip download -q --no-deps --only-binary=:all: --python-version $PY_TARGET --implementation cp"
    pip="$pip --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
    if [ "$CU" = 12 ]; then nvjpeg="nvidia-nvjpeg-cu12"; else nvjpeg="nvidia-nvjpeg==13.0.*"; fi
    $pip -d "$GPU_DIR/whl" "nvidia-nvimgcodec-cu$CU==0.9.*" "$nvjpeg"
    # the bench's chart and memory sampling (node), without numpy/pillow/packaging: the machine's own are used
    $pip -d "$GPU_DIR/whl" matplotlib contourpy cycler fonttools kiwisolver pyparsing python-dateutil six psutil
    # FFCV has no wheel: build one for the target's Python (a matching interpreter must be installed here)
    local target_py="" candidate
    for candidate in ${PY_BUILD:-} $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$PY_TARGET"*/bin/python"$PY_TARGET" \
            2>/dev/null) "python$PY_TARGET"; do
        "$candidate" -c "" 2>/dev/null && { target_py=$candidate; break; }
    done
    [ -n "$target_py" ] || { echo "no python$PY_TARGET here to build FFCV's wheel with: set PY_BUILD" >&2; exit 1; }
    "$target_py" -m pip wheel -q --no-deps -w "$GPU_DIR/whl" ffcv==1.0.2
    # the libraries FFCV's extension needs that a CUDA image usually lacks
    local so
    so=$(unzip -Z1 "$GPU_DIR"/whl/ffcv-*.whl | grep '_libffcv.*\.so$')
    unzip -o -q -d /tmp/ffcv_whl "$GPU_DIR"/whl/ffcv-*.whl "$so"
    ldd "/tmp/ffcv_whl/$so" | awk '/=> \// {print $3}' \
        | grep -v -E '/(libc|libm|libstdc\+\+|libgcc_s|libz|libpthread|libdl|librt)\.so' \
        | xargs -I{} cp -L {} /tmp/gpu_lib/
    cp -L "$(ldconfig -p | awk '/libturbojpeg.so.0 / {print $NF; exit}')" /tmp/gpu_lib/
    tar -C /tmp/gpu_lib -cJf "$GPU_DIR/lib.tar.xz" .  # about 7 MiB instead of 22
    # a subset of the real sample (never committed: .gpu/ is ignored)
    rm -rf "$GPU_DIR/sample" && mkdir -p "$GPU_DIR/sample/train"
    if [ -d "$SAMPLE/train" ]; then
        ls "$SAMPLE/train" | awk -v n="$SAMPLE_EVERY" 'NR % n == 1' | while read -r cls; do
            cp -r "$SAMPLE/train/$cls" "$GPU_DIR/sample/train/"
        done
    fi
    du -sh "$GPU_DIR" "$GPU_DIR"/*
}

run() {
    OUT=${OUT:-gpu_out}
    mkdir -p "$OUT"
    local results="$OUT/gpu_results.md" log=/tmp/gpu_measure.log start=$SECONDS
    export PYTHONUNBUFFERED=1
    {
        echo "# GPU decode check ($(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null))"
        nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | sed 's/^/GPU: /'
    } >"$results"
    if [ -z "${SKIP_INSTALL:-}" ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$GPU_DIR"/whl/*.whl >>"$results" 2>&1 || { echo "wheel install failed" >>"$results"; return 1; }
    fi
    mkdir -p /tmp/gpu_lib && tar -C /tmp/gpu_lib -xJf "$GPU_DIR/lib.tar.xz"
    export PYTHONPATH="/tmp/site:$PWD" LD_LIBRARY_PATH="/tmp/gpu_lib:${LD_LIBRARY_PATH:-}"
    "$PY" - >>"$results" 2>&1 <<'EOF'
import os, sys, torch, numba, ffcv
try:
    from nvidia import nvimgcodec
    version = getattr(nvimgcodec, "__version__", "?")
except ImportError as error:
    version = f"missing ({error})"
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.cuda.is_available()}), "
      f"numba {numba.__version__}, ffcv {ffcv.__version__}, nvimgcodec {version}, cores {os.cpu_count()}")
EOF
    echo -e "\n## GPU tests\n\n\`\`\`" >>"$results"
    timeout 180 "$PY" -m pytest -q -rA -p no:cacheprovider -o addopts="" tests/test_gpu.py \
        tests/test_gpu_decode_cuda.py 2>&1 | tail -40 >>"$results"
    echo '```' >>"$results"
    local sample="$GPU_DIR/sample"
    [ -d "$sample/train" ] && [ -n "$(ls "$sample/train")" ] || sample=""
    # shellcheck disable=SC2086
    timeout 270 "$PY" tests/helpers/gpu_measure.py --out "$results" --work /tmp/gpu_measure \
        ${sample:+--sample "$sample"} $MEASURE_ARGS >"$log" 2>&1 \
        || echo "gpu_measure.py exited $? (log below)" >>"$results"
    [ -s "$log" ] && { echo -e "\n\`\`\`"; grep -v -i "nvtiff\|nvjpeg2k" "$log" | tail -20; echo '```'; } >>"$results"
    echo -e "\nwall: $((SECONDS - start)) s" >>"$results"
    cat "$results"
}

node() {
    OUT=${OUT:-gpu_out}
    mkdir -p "$OUT"
    local results="$OUT/gpu_node.md" start=$SECONDS sample="$GPU_DIR/sample" procs workers
    [ -d /tmp/site ] || { echo "run \`bash tests/helpers/gpu_session.sh run\` first (it installs the wheels)" >&2; return 1; }
    mkdir -p /tmp/gpu_lib && tar -C /tmp/gpu_lib -xJf "$GPU_DIR/lib.tar.xz"
    export PYTHONPATH="/tmp/site:$PWD" LD_LIBRARY_PATH="/tmp/gpu_lib:${LD_LIBRARY_PATH:-}" PYTHONUNBUFFERED=1
    [ -d "$sample/train" ] && [ -n "$(ls "$sample/train")" ] || sample=""
    echo "# Node rows ($(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null))" >"$results"
    local IFS_SAVED=$IFS layout
    IFS=, read -r -a layouts <<<"$LAYOUTS"
    IFS=$IFS_SAVED
    for layout in "${layouts[@]}"; do
        read -r procs workers <<<"$layout"
        echo -e "\n## $procs process(es) x $workers threads\n" >>"$results"
        # shellcheck disable=SC2086
        timeout 170 "$PY" -m jit_ffcv.cli bench --procs "$procs" --workers "$workers" --repeat 1 --skip-writer \
            --sizes $SIZES --target-samples 6000 --out /tmp/gpu_node ${sample:+--data-path "$sample"} \
            --chart /tmp/gpu_node/chart.png >/tmp/gpu_node.log 2>&1 || echo "bench exited $?" >>"$results"
        grep -v "it/s\|run/s" /tmp/gpu_node.log | tail -25 >>"$results"
    done
    echo -e "\nwall: $((SECONDS - start)) s" >>"$results"
    cat "$results"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    node) node ;;
    *) echo "usage: bash tests/helpers/gpu_session.sh prepare|run|node (see the comment at its top)" >&2; exit 2 ;;
esac
