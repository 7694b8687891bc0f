# The two commands of the README: `make report` and `make test`.
# Both create/update the virtual environment in .venv first (only when the requirements changed).
VENV    ?= .venv
PY      := $(VENV)/bin/python
PRESET  ?= mini
PYTEST_ARGS ?=
# which PyTorch build the venv gets (tools/torch_index.py): auto (from nvidia-smi's driver version; CPU-only
# without an NVIDIA GPU), cpu, cu126, cu128, cu130 (https://download.pytorch.org/whl/<index>), or pypi (the pinned
# wheels from PyPI: CUDA 13, driver >= 580). auto falls back to pypi when the index cannot be reached.
TORCH_INDEX ?= auto
TORCH_INDEX_URL ?= https://download.pytorch.org/whl

.PHONY: report site test lint test-fullsize standins gpu-check gpu-wheels venv notebooks lab bench demo slides-offline clean

$(VENV)/.installed: requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	@index=$$(TORCH_INDEX_BASE_URL=$(TORCH_INDEX_URL) python3 tools/torch_index.py $(TORCH_INDEX)) || exit 1; \
	if [ "$$index" != pypi ]; then \
	  echo "installing $$(python3 tools/torch_index.py --pins) from $(TORCH_INDEX_URL)/$$index"; \
	  $(PY) -m pip install --index-url $(TORCH_INDEX_URL)/$$index $$(python3 tools/torch_index.py --pins) \
	    || { echo "could not install torch from $(TORCH_INDEX_URL)/$$index: choose another build with" \
	              "TORCH_INDEX=cpu|cu126|cu128|cu130|pypi (README, 'What you need')"; exit 1; }; \
	fi; echo "$$index" > $(VENV)/torch_index.txt
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --no-deps -e .
	touch $@

venv: $(VENV)/.installed

## run the whole notebook series with PRESET (default mini: the study at toy scale on digits, trained for real; smoke: the pipeline check the tests run), export the report + slides, then build the site
## (`make site`); offline (reveal.js and MathJax copied beside them from installed packages). CDN=1: from the internet
report: venv
	$(PY) -m helpers.report --preset $(PRESET) $(if $(CDN),--cdn)

## the whole course as a static website from the last run's executed notebooks (no re-execution):
## reports/$(PRESET)/site/index.html, offline (MathJax and the theme from installed packages); CDN=1: MathJax from
## its CDN. `make report` builds it as its last step.
site: venv
	$(PY) -m helpers.report.site --preset $(PRESET) $(if $(CDN),--cdn)

## unit tests, reference checks and one smoke execution of every notebook
test: venv lint
	$(PY) -m pytest $(PYTEST_ARGS)

## ruff (configured in pyproject.toml): style, imports, likely bugs; `make test` runs it first
lint: venv
	$(PY) -m ruff check helpers tests tools

## the fullsize tier: preset full at its real sizes on the CPU (lite: the same paths, checked key by key), on random-weight stand-ins of
## every model and data set (tests.fixtures.standins, written once into data/standins: about 6 GB); one training
## step, two sampling steps, two images, every notebook. About 25 minutes on 2 cores; peak about 16 GB.
test-fullsize: venv
	$(PY) -m pytest -m fullsize $(PYTEST_ARGS)

## the full-size stand-ins alone (published layouts and configs, random weights)
standins: venv
	$(PY) -m tests.fixtures.standins --out data/standins

## on a machine with a CUDA GPU: pytest -m gpu, benchmark pieces, the fullsize tier on CUDA if time is left
## (at most 8 minutes); results are written as they come into reports/gpu_check/ (docs/benchmarks.md says what
## to do with them). No venv needed: it runs .venv/bin/python when that works there, else python3 with the
## wheels of `make gpu-wheels` (carried in .whl/ to a machine without network)
gpu-check:
	bash tools/gpu_check.sh

## the wheels gpu-check needs on a GPU machine whose python3 has torch but not the rest (downloaded into .whl/)
gpu-wheels:
	bash tools/gpu_wheels.sh

## benchmark of the heavy steps: BENCH_PRESET=smoke (default) tiny configs anywhere; full and lite at real sizes on a GPU
## (refused on a CPU, saying what to run instead: docs/benchmarks.md)
BENCH_PRESET ?= smoke
bench: venv
	$(PY) -m helpers.tools.bench --preset $(BENCH_PRESET)

## the live demo (Gradio) on http://127.0.0.1:$(PORT), offline, with the models `make report` saved:
## tab Inpaint (paint a hole, every method side by side) and tab "Which looks real?" (blind votes)
PORT    ?= 7860
demo: venv
	$(PY) -m helpers.apps.demo_ui --preset $(PRESET) --port $(PORT)

## take the course interactively: JupyterLab on the notebooks (jupytext keeps .md and .ipynb in sync)
lab: venv
	$(VENV)/bin/jupyter lab notebooks/

## sync every notebook pair: notebooks/NN_name.md (MyST source) <-> NN_name.ipynb (derived, no outputs).
## jupytext takes the newer side of each pair as the source; then the taught cells take the edits of
## helpers/course/ (a cell edited since the last sync is never overwritten: the command fails, naming the
## cell and `taught pull NN` / `taught reset NN`); the pairs are synced again, outputs cleared, .md newer.
notebooks: venv
	$(PY) -m helpers.tools.taught notebooks

## optional: reveal.js, require.js, jQuery and MathJax from the npm registry instead of the pip packages that
## ship them (requirements-nodeps.txt); `make report` uses these for any piece the packages do not provide.
## (MathJax trimmed to what TeX-AMS_CHTML-full needs: about 4 MB of its 71)
MATHJAX_PARTS = MathJax.js config/TeX-AMS_CHTML-full.js config/Safe.js extensions jax/input/TeX jax/element \
	jax/output/CommonHTML fonts/HTML-CSS/TeX/woff localization/en
slides-offline:
	rm -rf data/cache/slides_js && mkdir -p data/cache/slides_js/reveal.js data/cache/slides_js/mathjax
	cd data/cache/slides_js && npm pack reveal.js@4.0.2 requirejs@2.3.7 jquery@2.2.4 mathjax@2.7.7 \
	  && tar xzf reveal.js-4.0.2.tgz -C reveal.js --strip-components=1 \
	  && tar xzf requirejs-2.3.7.tgz package/require.js --strip-components=1 \
	  && tar xzf jquery-2.2.4.tgz package/dist/jquery.min.js --strip-components=2 \
	  && tar xzf mathjax-2.7.7.tgz -C mathjax --strip-components=1 $(addprefix package/,$(MATHJAX_PARTS)) \
	  && rm -f *.tgz

clean:
	rm -rf reports/$(PRESET) data/$(PRESET)
