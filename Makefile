# The two commands: `make demo` and `make test`. Both create .venv and install what they need.
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
FASHION_DIR ?= /usr/share/datasets/fashion-mnist
RESULTS ?= results

.PHONY: venv fashion-mnist demo test bench gpu-check gpu-check-smoke clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[test]'
	touch $@

# Fashion-MNIST comes from Debian's dataset-fashion-mnist; install it when missing and we can.
fashion-mnist:
	@if [ ! -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "error: Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist' or set FASHION_DIR" >&2; exit 1; fi; \
	fi

# Rerunning the demo resumes an interrupted run or reports the finished one (--overwrite redoes it).
DEMO_RUN := $(RESULTS)/fashion_mnist/SL_T5
demo: venv fashion-mnist
	$(VENV)/bin/cljax run --dataset fashion_mnist --num-tasks 5 --n-repeats 4 --results-dir $(RESULTS)
	$(VENV)/bin/cljax analyze $(DEMO_RUN)
	@echo "results: $(DEMO_RUN)/task_000 ... task_004"
	@echo "plots:   $(DEMO_RUN)/analysis/*.png   summary: $(DEMO_RUN)/analysis/summary.json"

# Two workers: most of the suite is XLA compiling, one core per program (docs/benchmark.md, "Test suite").
# --dist loadfile: a file's tests run on one worker, so a run a module trains once for its tests
# is trained once (loadgroup's xdist_group marks stopped working with pytest 9.2: the tests were
# spread over both workers and such runs trained on each).
TEST_WORKERS ?= 2
test: venv fashion-mnist
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# Throughput of cljax vs a PyTorch reference and the matmul peak (docs/benchmark.md). torch comes
# from the bench extra (torch==2.13.0, the CPU wheel here) only when it is missing.
BENCH_JSON ?= $(RESULTS)/benchmark.json
bench: venv
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q -e '.[bench]'
	mkdir -p $(dir $(BENCH_JSON))
	$(PYTHON) benchmarks/throughput.py --json $(BENCH_JSON)

# On a GPU machine whose image already holds jax, flax, optax, numpy, tqdm, matplotlib, pytest
# (and torch for the peers): downloads and installs nothing, runs this checkout through PYTHONPATH,
# at most 8 minutes, JSON + markdown into $(GPU_CHECK_OUT) (docs/benchmark.md, "GPU check").
# A second call: GPU_CHECK_ARGS="--stages deterministic", "--stages tests --tests rest --limit tests=300"
# or "--stages profile throughput_large --conv-impl fused" (a candidate timed as a user would run it);
# or both in one call: GPU_CHECK_ARGS="--budget 460 --follow-up 110" makes the second call the
# summary proposes at once (a machine left idle between two calls may be handed back); add
# "--export DIR" to copy the summaries and one archive of the logs into a flat folder.
GPU_PY ?= python3
GPU_CHECK_OUT ?= $(RESULTS)/gpu_check
GPU_CHECK_ARGS ?=
gpu-check:
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PY) benchmarks/gpu_check.py --out $(GPU_CHECK_OUT) --fashion-dir $(FASHION_DIR) $(GPU_CHECK_ARGS)

# The same stages at a tiny size on any machine (the CPU here, about a minute), in .venv as `make test`
# sets it up (SMOKE_PY=python3 for an image's own Python); tests/test_gpu_check.py runs it.
SMOKE_PY ?= $(PYTHON)
gpu-check-smoke: $(if $(filter $(PYTHON),$(SMOKE_PY)),venv) fashion-mnist
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(SMOKE_PY) benchmarks/gpu_check.py --smoke --out $(GPU_CHECK_OUT)_smoke --fashion-dir $(FASHION_DIR)

clean:
	rm -rf $(VENV) .pytest_cache
