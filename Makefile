# Every target runs inside .venv, made by `make setup`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BACKEND_EXTRA ?= tf-cpu

DATA ?= data/digits
CACHE ?= cache/digits.h5
IMAGE_SIZE ?= 224
BATCH ?= 32
# empty: an existing cache's own weights file, else imagenet (`extract --weights` without a value given)
WEIGHTS ?=
PRECISION ?= auto
STORAGE ?= float16
BACKBONE ?= vgg16
EXTRACT_FLAGS ?=
ENGINE ?= local

.PHONY: setup demo extract info test lint clean bench system-packages

setup: $(VENV)/.installed system-packages

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(BACKEND_EXTRA),dev]"
	touch $@

# JAX and PyTorch beside TensorFlow: `KERAS_BACKEND=jax|torch` then works, and the tests compare every
# installed backend with TensorFlow. TORCH_SPEC picks the wheel: 2.13.0 is a CPU build on this project's
# machines; elsewhere the registry's default torch is a CUDA build of several GB (PyTorch's CPU wheel index avoids that).
TORCH_SPEC ?= torch==2.13.0
.PHONY: setup-backends
setup-backends: setup
	$(PY) -m pip install --quiet "jax>=0.4.30" "$(TORCH_SPEC)"

# Ray beside the rest: `make extract ENGINE=ray` and `make bench ENGINE=ray` then work, and the tests run
# tests/test_distributed.py on a local Ray.
.PHONY: setup-distributed
setup-distributed: setup
	$(PY) -m pip install --quiet -e ".[$(BACKEND_EXTRA),dev,distributed]"

# The tests render report pages in headless Chromium and read the cache with HDF5's own h5dump and
# h5ls: installed with the system's package manager where this user may (root, or sudo without a
# password); otherwise one line says what to run. Each entry is command:package.
SYSTEM_PACKAGES ?= chromium:chromium h5dump:hdf5-tools
system-packages:
	@missing=""; for entry in $(SYSTEM_PACKAGES); do command -v $${entry%%:*} >/dev/null 2>&1 || missing="$$missing $${entry#*:}"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=none; fi; \
		if command -v apt-get >/dev/null 2>&1 && [ "$$sudo" != none ]; then \
			echo "installing$$missing (apt-get; the tests use them)"; \
			$$sudo apt-get update -qq >/dev/null 2>&1 && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null 2>&1 \
				|| echo "note: could not install$$missing; run \`sudo apt-get install$$missing\` before make test"; \
		else \
			echo "note: the tests need$$missing; install them (e.g. \`sudo apt-get install$$missing\`) before make test"; \
		fi; \
	fi

DEMO_PER_CLASS ?= 30
demo: setup
	$(PY) -m pipeline.demo --per-class $(DEMO_PER_CLASS)

extract: setup
	mkdir -p $(dir $(CACHE))
	$(PY) -m pipeline extract $(DATA) --cache $(CACHE) --backbone $(BACKBONE) --image-size $(IMAGE_SIZE) \
		--batch-size $(BATCH) $(if $(WEIGHTS),--weights $(WEIGHTS)) --precision $(PRECISION) --storage $(STORAGE) --engine $(ENGINE) $(EXTRACT_FLAGS)

info: setup
	$(PY) -m pipeline info $(CACHE)

# `make test`: the whole suite, one pytest-xdist worker a core (a test file stays on one worker, so its
# module fixtures are made once), then the 15 slowest durations, so the next slow test shows when it lands.
TEST_WORKERS ?= auto
test: setup
	$(PY) -m pytest tests -n $(TEST_WORKERS) --dist loadfile --durations=15

# `make coverage`: line and branch coverage of pipeline/, features_cache/ and classifiers/ over the whole
# suite in one process, the processes it starts included (pyproject.toml's [tool.coverage]).
.PHONY: coverage
coverage: setup
	rm -f .coverage .coverage.*
	$(PY) -m coverage run -m pytest tests -q -p no:xdist
	$(PY) -m coverage combine -q
	$(PY) -m coverage report

lint: setup
	$(VENV)/bin/ruff check .

# `make bench`: files-to-cache throughput against the bare model (and where extract's wall goes), decoding alone and the
# hand-written Keras route, re-runs, heads and memory; prints a table, writes $(BENCH_OUT)/bench.json.
# The backend is the environment's KERAS_BACKEND (e.g. `make bench KERAS_BACKEND=jax`).
BENCH_N ?= 96
BENCH_SIZE ?= 224
BENCH_PRECISION ?= auto
BENCH_BATCH ?= 32
BENCH_OUT ?= bench-out

# `make bench ENGINE=ray`: the single-machine engine against Ray on 1, 2 and 3 simulated nodes, at 64 and BENCH_N images.
bench: setup
ifeq ($(ENGINE),ray)
	$(PY) -m bench.ray_cluster --n 64 $(BENCH_N) --size $(BENCH_SIZE) --batch $(BENCH_BATCH) --out $(BENCH_OUT)
else
	$(PY) -m bench.throughput --n $(BENCH_N) --size $(BENCH_SIZE) --precision $(BENCH_PRECISION) \
		--batch $(BENCH_BATCH) --out $(BENCH_OUT)
endif

# `make bench-stage-two`: stage two as a user feels it, whole `train` processes (logreg on the demo's
# cache, dense on the seed recipe's 600 + 150 images, a 10-value sweep) against the plain Keras route,
# each goal's figure beside its target; writes $(BENCH_OUT)/stage-two.json.
BENCH_REPEATS ?= 3
.PHONY: bench-stage-two
bench-stage-two: setup
	$(PY) -m bench.stage_two --repeats $(BENCH_REPEATS) --out $(BENCH_OUT)

# `make bench-int8 INT8_WEIGHTS=/path/vgg16.weights.h5`: post-training INT8 of the backbone (OpenVINO + NNCF,
# calibrated on real photos) against the product's float32 and bfloat16, with feature error and head accuracy;
# writes $(BENCH_OUT)/int8.json. OpenVINO and NNCF are not dependencies: the target installs them into .venv.
INT8_WEIGHTS ?=
.PHONY: bench-int8
bench-int8: setup
	$(if $(INT8_WEIGHTS),,$(error pass INT8_WEIGHTS=<pretrained VGG16 include_top=False .h5>: accuracy needs real weights))
	$(PY) -c "import openvino, nncf" 2>/dev/null || $(PY) -m pip install --quiet openvino nncf
	$(PY) -m bench.int8 --weights $(INT8_WEIGHTS) --out $(BENCH_OUT)

# `make bench-finetune WEIGHTS=/path/vgg16.h5`: fine-tuning VGG16's block5 from the cache (block4_pool maps and views
# extracted once) against fine-tuning it from images, on small tiles of twelve real photos; writes
# $(BENCH_OUT)/finetune/finetune.json. 160 px is what three seeds fit in within an hour on 2 shared cores; users work at 224.
FINETUNE_SIZE ?= 160
FINETUNE_SEEDS ?= 0 1 2
.PHONY: bench-finetune
bench-finetune: setup
	$(PY) -m bench.finetune --weights $(or $(WEIGHTS),imagenet) --size $(FINETUNE_SIZE) --seeds $(FINETUNE_SEEDS) --out $(BENCH_OUT)

# A GPU machine without network or Keras: `make bench-device-pack` here puts Keras and its two small
# dependencies as Python 3.12 wheels into $(DEVICE_PACK) (about 3 MB, ignored by git); there, in a copy of
# this folder with $(DEVICE_PACK), `bench/device.sh OUT_DIR` installs them and runs the bench on JAX and PyTorch.
DEVICE_PACK ?= .device-pack
DEVICE_PYTHON_VERSION ?= 3.12
.PHONY: bench-device-pack
bench-device-pack: setup
	rm -rf $(DEVICE_PACK) && mkdir -p $(DEVICE_PACK)
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(DEVICE_PYTHON_VERSION) \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d $(DEVICE_PACK) \
		"keras==$$($(PY) -c 'from importlib.metadata import version; print(version("keras"))')" namex optree
	@du -sh $(DEVICE_PACK)

# After training: `make report [RUN=<run>]` (misclassified images, errors.csv, report.html; the latest run
# by default, on test or on val where there is no test split),
# `make audit CACHE=...` (likely label errors), `make predict RUN=<run> IMAGES="a.jpg folder/"`
# (writes $(PREDICTIONS)), `make export RUN=<run> OUT=model.keras` (raw uint8 images in, probabilities out).
RUN ?=
RUNS_DIR ?= runs
SPLIT ?=
IMAGES ?=
PREDICTIONS ?= predictions.csv
OUT ?= model.keras
need_run = $(if $(RUN),,$(error pass RUN=<run folder or name under $(RUNS_DIR)>))

.PHONY: report audit predict export

report: setup
	$(PY) -m pipeline report $(RUN) $(if $(SPLIT),--split $(SPLIT)) --runs-dir $(RUNS_DIR)

audit: setup
	$(PY) -m pipeline audit $(CACHE)

predict: setup
	$(need_run)
	$(if $(IMAGES),,$(error pass IMAGES=<image files or folders>))
	$(PY) -m pipeline predict $(RUN) $(IMAGES) --runs-dir $(RUNS_DIR) --out $(PREDICTIONS)

export: setup
	$(need_run)
	$(PY) -m pipeline export $(RUN) $(OUT) --runs-dir $(RUNS_DIR)

# Stage two: e.g. make train-head CACHE=cache/digits.h5 HEAD=logreg SET="C=0.1,1,10"
# empty: train's default head (dense), which train names
HEAD ?=
SET ?=
RUN_NAME ?=
SEED ?= 0
TRAIN_FLAGS ?=

.PHONY: train-head runs

train-head: setup
	$(PY) -m pipeline train $(CACHE) $(if $(HEAD),--head $(HEAD)) --runs-dir $(RUNS_DIR) --seed $(SEED) \
		$(foreach setting,$(SET),--set $(setting)) $(if $(RUN_NAME),--name $(RUN_NAME)) $(TRAIN_FLAGS)

runs: setup
	$(PY) -m pipeline runs --runs-dir $(RUNS_DIR)

# `make docs`: the CLI reference regenerated from the parsers, then the site built into site/ (open site/index.html);
# --strict fails on a broken link or a page missing from mkdocs.yml's nav.
.PHONY: docs
docs: setup
	$(PY) docs/cli_reference.py
	$(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf cache runs bench-out .pytest_cache .coverage .coverage.* site
