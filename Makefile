# Every target runs inside .venv, made by `make setup`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BACKEND_EXTRA ?= tf-cpu

DATA ?= data/digits
CACHE ?= cache/features.h5
IMAGE_SIZE ?= 224
BATCH ?= 32
WEIGHTS ?= imagenet
PRECISION ?= auto
STORAGE ?= float16
BACKBONE ?= vgg16
EXTRACT_FLAGS ?=

.PHONY: setup demo extract info test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(BACKEND_EXTRA),dev]"
	touch $@

demo: setup
	$(PY) -m pipeline.demo

extract: setup
	mkdir -p $(dir $(CACHE))
	$(PY) -m pipeline extract $(DATA) --cache $(CACHE) --backbone $(BACKBONE) --image-size $(IMAGE_SIZE) \
		--batch-size $(BATCH) --weights $(WEIGHTS) --precision $(PRECISION) --storage $(STORAGE) $(EXTRACT_FLAGS)

info: setup
	$(PY) -m pipeline info $(CACHE)

test: setup
	$(PY) -m pytest tests

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf cache runs bench-out .pytest_cache
