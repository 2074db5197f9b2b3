# jit-ffcv: one entry point for set-up, tests, demo and benchmark (docs/development.md says what each costs).
# `make install` works on a fresh Debian/Ubuntu machine as root and is idempotent.
# `make help` prints the lines below that start with '## '.
## make install     apt packages, .venv, torch (CPU build unless TORCH=...), the project; idempotent
## make test        lint, then the whole test suite on CPU, one pytest worker per core: exactly what CI runs
## make check       the fast unit tier (tests not marked slow), for the edit-test loop
## make lint        ruff over the project (also the first step of make test)
## make stress      the writer's signal stress test and the decoding engine's stress test
## make demo        write a small beton, train a tiny JiT, compare img/s with the reference
## make bench       remeasure docs/benchmarks.md's tables (32 min and 5.7 GB under bench_out/ on 2 cores)
## make bench-scale the ImageNet-size rows (about 31 GB under bench_out/betons)
## make gpu-check   on a CUDA machine: GPU delivery and GPU decode tests, decode fidelity/throughput, the gpu table
## make clean       remove .venv, build/ and *.egg-info
# TORCH: the torch requirement installed first; the default is the CPU build.
#   CUDA users: make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"

VENV    ?= .venv
PY      := $(VENV)/bin/python
TORCH   ?= torch==2.13.0
APT_PKGS := pkg-config libopencv-dev libturbojpeg0-dev
STAMP   := $(VENV)/.jit-ffcv-installed

.PHONY: install system-deps test check lint stress demo bench bench-scale gpu-check clean help

install: system-deps $(STAMP)

system-deps:
	@if dpkg -s $(APT_PKGS) >/dev/null 2>&1; then echo "system packages present: $(APT_PKGS)"; \
	else apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PKGS); fi

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev,bench,cli]"
	touch $(STAMP)

# pytest-xdist: one worker per core (-n auto); worksteal keeps both cores busy to the end.
test: install lint
	$(PY) -m pytest -q -n auto --dist worksteal

check: install
	$(PY) -m pytest -q -n auto --dist worksteal -m "not slow"

lint: install
	$(VENV)/bin/ruff check jit_ffcv writers tests examples

# The writer under signals: 200 signals at random moments (SIGTERM/SIGINT to the process or its group,
# SIGKILL to one worker; start-up, mid-write, publish) and 10 cold starts; prints a table per case; then the engine and exit stress tests (~25 min in all).
stress: install
	$(PY) -m tests.helpers.signal_stress --deliveries 200 --cold 10
	$(PY) -m tests.helpers.engine_stress --trials 1000
	$(PY) -m tests.helpers.exit_stress --runs 200

demo: install
	$(VENV)/bin/jit-ffcv demo

# Measures on this machine and rewrites the generated blocks of docs/benchmarks.md (and docs/bench_cpu.png).
# Cost on a 2-core box, measured: 32 min and 5.7 GB under bench_out/ (betons, kept and reused by the next
# run); the two throughput commands print their own estimate first. ImageNet-scale rows: make bench-scale.
BENCH    := $(VENV)/bin/jit-ffcv bench --doc docs/benchmarks.md --out bench_out
REPEAT   ?= 3
bench: install
	@echo "make bench: about 32 min and 5.7 GB under bench_out/ on a 2-core box (REPEAT=$(REPEAT) rounds); the 31 GB ImageNet-scale rows are make bench-scale"
	$(BENCH) --quality-table
	$(BENCH) --pages
	$(BENCH) --mixing
	$(BENCH) --repeat $(REPEAT) --chart docs/bench_cpu.png
	$(BENCH) --repeat $(REPEAT) --procs 2 --workers 1 --skip-writer

# ImageNet-size betons (1,281,167 and 128,116 samples): about 31 GB under bench_out/betons, built once at copy
# speed (minutes) and reused; the measurements take about 10 min.
bench-scale: install
	@echo "make bench-scale: writes about 31 GB under bench_out/betons (kept for reruns; delete to re-measure the build)"
	$(BENCH) --scale

# On a CUDA machine (make install TORCH=... with a CUDA build): the gpu extra (nvImageCodec; CUDA 13 torch:
# pip install "nvidia-nvimgcodec-cu13[nvjpeg]" instead), the GPU delivery and GPU decode tests, the GPU decode's
# fidelity and throughput tables (bench_out_gpu/gpu_decode.md; a machine without network:
# tests/helpers/gpu_session.sh), then the throughput rows with batches delivered on the GPU (uint8 and JiT's
# float) next to a bare FFCV Loader, and the node layout 8 processes x 2 threads against 1 x 16, written to
# docs/benchmarks.md's gpu blocks.
GPU_REPEAT ?= 2
gpu-check: install
	$(PY) -m pip install -q -e ".[gpu]"
	$(PY) -m pytest -q -rs tests/test_gpu.py tests/test_gpu_decode_cuda.py
	$(PY) tests/helpers/gpu_measure.py --out bench_out_gpu/gpu_decode.md --work bench_out_gpu/decode
	$(VENV)/bin/jit-ffcv bench --device cuda --pipelines "reference" "FFCV Loader, no flip, jpg q90" \
		"jit-ffcv DataModule, jpg q90" --skip-writer --repeat $(GPU_REPEAT) --target-samples 20000 \
		--out bench_out_gpu --doc docs/benchmarks.md --tag gpu --chart bench_out_gpu/chart.png
	$(VENV)/bin/jit-ffcv bench --procs 8 --workers 2 --repeat $(GPU_REPEAT) --target-samples 20000 --skip-writer \
		--out bench_out_gpu --doc docs/benchmarks.md --tag gpu-node

clean:
	rm -rf $(VENV) build *.egg-info

.PHONY: help
help:
	@sed -n 's/^## //p' $(firstword $(MAKEFILE_LIST))
