# One short target per verb. Every target installs what it needs on first use.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

# MNIST: data/ (torchvision downloads it there when online); offline, ../shared/data if it has it.
DATA_DIR ?= $(if $(wildcard data/MNIST/raw/*),data,$(if $(wildcard ../shared/data/MNIST/raw/*),../shared/data,data))
PRESET ?= cdcgan
# Each target's variables mean the same whether given on the command line or in the environment: the targets
# whose defaults differ (N: 16 digits to predict, 60,000 for a data set; OUT: a run, or a data set) apply them
# where they use them, so neither has a default here. RUN_DIR: the run that train writes and archive and bench read.
RUN_DIR = $(or $(OUT),artifacts)
# where `make archive` puts the .mar and `make serve` serves it from
MODEL_STORE ?= model_store
EPOCHS ?=
# train on the first N training images only: a smoke test of the whole path (the test of `make demo` uses it)
LIMIT ?=
DEVICE ?= auto
RESUME ?=
SEED ?=
DIGIT ?=
DIGITS ?=

# What the project needs from outside Python: scripts/prerequisites.py installs it as root with apt-get,
# else stops with one line per tool naming the command, before .venv/ is made.
SYSTEM_TOOLS := java haproxy

.PHONY: install prerequisites test-prerequisites baseline train archive serve stop predict dataset demo test evaluate bench bench-train ablation clean kserve-bundle \
	playground playground-install

install: $(VENV)/.installed

prerequisites:
	@$(PYTHON) -m scripts.prerequisites $(SYSTEM_TOOLS)

test-prerequisites:
	@$(PYTHON) -m scripts.prerequisites $(SYSTEM_TOOLS) chromium

# Order-only: the check runs at every `make install` (it takes a fraction of a second), before the venv.
$(VENV)/.installed: requirements.txt | prerequisites
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# The page's packages on first use, not in `make install`; with requirements.txt so one resolve keeps both's pins.
playground-install: $(VENV)/.playground-installed

$(VENV)/.playground-installed: requirements-playground.txt $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-playground.txt
	touch $@

train: install
	$(PY) -m train --preset $(PRESET) --data-dir $(DATA_DIR) --device $(DEVICE) --out-dir $(RUN_DIR) \
		$(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(LIMIT),--limit $(LIMIT)) $(if $(RESUME),--resume)

# The tutorial recipe, the baseline of `make evaluate` and `make bench-train` (batch size 1: slow; docs/training.md).
baseline: install
	$(MAKE) train PRESET=tutorial OUT=artifacts/presets/tutorial $(if $(RESUME),RESUME=1)

archive: install
	$(PY) -m scripts.archive --weights $(RUN_DIR)/generator.pt --metadata $(RUN_DIR)/generator.json --export-path $(MODEL_STORE)

serve: install
	$(PY) -m scripts.server start --model-store $(MODEL_STORE)

stop: install
	$(PY) -m scripts.server stop

predict: install
	$(PY) -m scripts.predict --count $(or $(N),16) $(if $(SEED),--seed $(SEED)) $(if $(DIGIT),--digit $(DIGIT)) \
		$(if $(DIGITS),--digits $(DIGITS))

# A page on 127.0.0.1 (it prints the URL) against `make serve`'s TorchServe, or one it starts and stops itself;
# ARGS='--port N' if its port is taken.
playground: install playground-install
	$(PY) -m playground --model-store $(MODEL_STORE) $(ARGS)

# A synthetic MNIST from the running server (make serve), in MNIST's IDX format: N training digits (60,000
# unless N is given), N/6 test digits, under OUT/MNIST/raw (OUT: artifacts/dataset unless given).
dataset: install
	$(PY) -m scripts.dataset --count $(or $(N),60000) --seed $(or $(SEED),0) --out $(or $(OUT),artifacts/dataset)

# Set-up, a one-epoch training, archive, serve, one request, the picture, and the server stopped again.
# The demo's model and archive stay in artifacts/demo, so a real model and its model_store/ archive are kept.
demo: install
	$(MAKE) train EPOCHS=$(or $(EPOCHS),1) OUT=artifacts/demo
	$(MAKE) archive OUT=artifacts/demo MODEL_STORE=artifacts/demo/model_store
	$(MAKE) serve MODEL_STORE=artifacts/demo/model_store
	$(MAKE) predict SEED=$(or $(SEED),0); status=$$?; $(MAKE) stop; exit $$status

# The quality report of the served model against its targets: the results page docs/quality.md with
# docs/digits.png (one row per digit), and artifacts/report.md; ARGS='--only one-hand' (or your-hand) rewrites that section alone.
evaluate: install
	$(PY) -m experiments.evaluate --data-dir $(DATA_DIR) --out-dir artifacts --docs-dir docs $(ARGS)

bench: install
	$(PY) -m experiments.bench --run-dir $(RUN_DIR) --data-dir $(DATA_DIR) $(ARGS)

bench-train: install
	$(PY) -m experiments.bench_train --data-dir $(DATA_DIR)

ablation: install
	$(PY) -m experiments.ablation --data-dir $(DATA_DIR)

# Test files run in TEST_WORKERS processes (pytest-xdist), each file whole in one, so a module's server starts once.
TEST_WORKERS ?= 2
# The suite also drives Debian's chromium (the playground's test): checked with the rest before anything installs.
test: test-prerequisites install playground-install
	DATA_DIR=$(DATA_DIR) $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# Stops the server if there is a venv to stop it with (cleaning installs nothing), then deletes every run,
# the tutorial baseline and the cached classifier included.
clean:
	-test ! -x $(PY) || $(PY) -m scripts.server stop
	rm -rf artifacts model_store/*.mar

# artifacts/kserve/{config/config.properties,model-store/mnist_gan.mar} for KServe's storageUri (deploy/README.md).
kserve-bundle: install
	$(PY) -m scripts.kserve_bundle --store $(MODEL_STORE) --out artifacts/kserve
