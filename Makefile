# jit-ffcv: one entry point for set-up, tests, demo and benchmark.
# `make install` works on a fresh Debian/Ubuntu machine as root and is idempotent.
# TORCH: the torch requirement installed first; the default is the CPU build.
#   CUDA users: make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"

VENV    ?= .venv
PY      := $(VENV)/bin/python
TORCH   ?= torch==2.13.0
APT_PKGS := pkg-config libopencv-dev libturbojpeg0-dev
STAMP   := $(VENV)/.jit-ffcv-installed

.PHONY: install system-deps test demo bench gpu-check clean stress

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

test: install
	$(PY) -m pytest -q

# The writer under signals: 200 signals at random moments (SIGTERM/SIGINT to the process or its group,
# SIGKILL to one worker; start-up, mid-write, publish) and 10 cold starts; prints a table per case (~10 min).
stress: install
	$(PY) -m tests.helpers.signal_stress --deliveries 200 --cold 10

demo: install
	$(VENV)/bin/jit-ffcv demo

# Measures on this machine and rewrites the README's tables and docs/bench_cpu.png.
bench: install
	$(VENV)/bin/jit-ffcv bench --quality-table --readme README.md --out bench_out
	$(VENV)/bin/jit-ffcv bench --pages --readme README.md --out bench_out
	$(VENV)/bin/jit-ffcv bench --mixing --readme README.md --out bench_out
	$(VENV)/bin/jit-ffcv bench --scale --readme README.md --out bench_out
	$(VENV)/bin/jit-ffcv bench --readme README.md --out bench_out --chart docs/bench_cpu.png

# On a CUDA machine (make install TORCH=... with a CUDA build): the GPU delivery stress test, then the
# throughput rows with batches delivered on the GPU (uint8 and JiT's float), written to the README's gpu block.
gpu-check: install
	$(PY) -m pytest -q -rs tests/test_gpu.py
	$(VENV)/bin/jit-ffcv bench --device cuda --pipelines "reference" "jit-ffcv DataModule, jpg q90" --skip-writer \
		--target-samples 20000 --out bench_out_gpu --readme README.md --tag gpu --chart bench_out_gpu/chart.png

clean:
	rm -rf $(VENV) build *.egg-info
