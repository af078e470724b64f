# Set-up-and-go targets. Each creates .venv and installs what it needs on first use.
#   make demo   the main job on the embedded corpus (offline, CPU)
#   make test   the layer contracts (import-linter), tests/core without torch, then the whole test suite
# A CPU torch is installed before anything else so that pip never pulls the CUDA build;
# on machines whose pip would fetch a CUDA torch, point TORCH_INDEX at PyTorch's CPU wheel index.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS ?= dense,pyserini,llm,ray,gguf,openai,serve,cpu,dev
# the demo needs only these (serve: the `reranker serve` commands it prints run in this venv); a first `make demo`
# skips the long builds (llama-cpp-python compiles from source)
DEMO_EXTRAS ?= train,dense,cpu,serve

.PHONY: install demo test test-fast benchmarks clean

# the venv with a CPU torch first, then the project with the extras in $(1)
define venv_with
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[$(1)]"
endef

$(BIN)/.installed: pyproject.toml Makefile
	$(call venv_with,$(EXTRAS))
	touch $@ $(BIN)/.installed-demo

# a full install serves the demo too (its stamp is touched above); otherwise only the demo's extras
$(BIN)/.installed-demo: pyproject.toml Makefile
	$(call venv_with,$(DEMO_EXTRAS))
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed-demo
	$(BIN)/reranker demo

# the layer contracts (pyproject.toml [tool.importlinter]) first: they fail in seconds; then the core's tests with
# neither torch nor student importable (the core is the base layer); then everything (import circles: tests/core/test_layers.py)
test: install
	$(BIN)/lint-imports
	$(BIN)/python tests/without_torch.py -q
	$(BIN)/python -m pytest

# the quick loop while developing: no integration (tests/app) and no slow modules (see tests/conftest.py)
test-fast: install
	$(BIN)/lint-imports
	$(BIN)/python tests/without_torch.py -q -m "not slow"
	$(BIN)/python -m pytest -m "not slow and not integration"

benchmarks: install
	$(BIN)/python benchmarks/bm25_baseline.py

clean:
	rm -rf $(VENV) runs .pytest_cache
