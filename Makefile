# jit-ffcv: one entry point for set-up, tests, demo and benchmark (docs/development.md says what each costs).
# `make install` works on a fresh Debian/Ubuntu machine as root and is idempotent.
# `make help` prints the lines below that start with '## '.
## make install     apt packages, .venv, torch (CPU build unless TORCH=...), the project; idempotent
## make test        lint, then the whole test suite on CPU, one pytest worker per core: exactly what CI runs
## make check       the fast unit tier (tests not marked slow), for the edit-test loop
## make lint        ruff over the project (also the first step of make test)
## make stress      the writer's signal stress test
## make demo        write a small beton, train a tiny JiT, compare img/s with the reference
## make bench       remeasure docs/benchmarks.md's tables (long; about 31 GB under bench_out/)
## make gpu-check   on a CUDA machine: GPU delivery and GPU decode tests, decode fidelity/throughput, the gpu table
## make clean       remove .venv, build/ and *.egg-info
# TORCH: the torch requirement installed first; the default is the CPU build.
#   CUDA users: make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"

VENV    ?= .venv
PY      := $(VENV)/bin/python
TORCH   ?= torch==2.13.0
APT_PKGS := pkg-config libopencv-dev libturbojpeg0-dev
STAMP   := $(VENV)/.jit-ffcv-installed

.PHONY: install system-deps test check lint demo bench gpu-check clean help

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

demo: install
	$(VENV)/bin/jit-ffcv demo

# Measures on this machine and rewrites the generated tables of docs/benchmarks.md and docs/bench_cpu.png.
# TODO lead: the commands below still pass --readme README.md; the bench branch points them at docs/benchmarks.md.
bench: install
	$(VENV)/bin/jit-ffcv bench --quality-table --readme README.md --out bench_out
	$(VENV)/bin/jit-ffcv bench --pages --readme README.md --out bench_out
	$(VENV)/bin/jit-ffcv bench --mixing --readme README.md --out bench_out
	$(VENV)/bin/jit-ffcv bench --scale --readme README.md --out bench_out
	$(VENV)/bin/jit-ffcv bench --readme README.md --out bench_out --chart docs/bench_cpu.png

# On a CUDA machine (make install TORCH=... with a CUDA build): the gpu extra (nvImageCodec; CUDA 13 torch:
# pip install "nvidia-nvimgcodec-cu13[nvjpeg]" instead), the GPU delivery and GPU decode tests, the GPU decode's
# fidelity and throughput tables (bench_out_gpu/gpu_decode.md; a machine without network:
# tests/helpers/gpu_session.sh), then the throughput rows with batches delivered on the GPU (uint8 and JiT's
# float), written to docs/benchmarks.md's gpu block.
gpu-check: install
	$(PY) -m pip install -q -e ".[gpu]"
	$(PY) -m pytest -q -rs tests/test_gpu.py tests/test_gpu_decode_cuda.py
	$(PY) tests/helpers/gpu_measure.py --out bench_out_gpu/gpu_decode.md --work bench_out_gpu/decode
	$(VENV)/bin/jit-ffcv bench --device cuda --pipelines "reference" "jit-ffcv DataModule, jpg q90" --skip-writer \
		--target-samples 20000 --out bench_out_gpu --readme README.md --tag gpu --chart bench_out_gpu/chart.png

clean:
	rm -rf $(VENV) build *.egg-info

.PHONY: help
help:
	@sed -n 's/^## //p' $(firstword $(MAKEFILE_LIST))
