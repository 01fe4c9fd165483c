# Set-up-and-go targets. `make run` and `make test` install what they need on a fresh machine:
# Debian's dataset-fashion-mnist package (apt-get) and a virtualenv pinned by constraints.txt.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
PYTEST_ARGS ?=

.PHONY: run test ops-test faults install data lint ui slow clean

run: install data
	$(BIN)/vitrieve run --catalogue fashion-mnist --profile quick

test: install data
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Operate it as a user would (docs/OPERATIONS.md): dagster dev + GraphQL + Chromium screenshots, and steps on a
# Celery worker with Redis, Postgres and S3 (moto). The tests apt-get what they lack (chromium, redis-server,
# postgresql) and start every server on 127.0.0.1.
ops-test: install data
	$(BIN)/python -m pytest -q -m "browser or celery" $(PYTEST_ARGS)

# A quick fault campaign (docs/BENCHMARKS.md, "Faults"): 10 seeded SIGKILLs of the pipeline, local and S3 (moto).
faults: install data
	$(BIN)/vitrieve bench faults --quick

slow: install data
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

install: $(VENV)/.installed

# torch==2.13.0 (constraints.txt) resolves to the local CPU wheel; see README "Installing". pip's output goes to
# .venv/pip.log, shown only if the install fails (pip warns about every index location it cannot use).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,scale]' > $(VENV)/pip.log 2>&1 \
	  || { cat $(VENV)/pip.log; exit 1; }
	touch $@

data: $(FMNIST)

$(FMNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

ui: install
	DAGSTER_HOME=$${DAGSTER_HOME:-$(CURDIR)/data/dagster_home} $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1

clean:
	rm -rf $(VENV) data
