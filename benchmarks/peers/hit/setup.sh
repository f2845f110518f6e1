#!/usr/bin/env bash
# Build the HiT peer's own virtual environment, benchmarks/peers/hit/.venv (git-ignored).
#
# HiT (hierarchy-transformers, He et al. 2024) needs sentence-transformers 3.4 and transformers 4.48, far
# older than the project's, so it never shares the project's .venv. The torch wheel is the CPU build.
# Idempotent: a venv whose stamp matches the pins below is left as it is.
#
#     bash benchmarks/peers/hit/setup.sh            # PYTHON=python3.11 by default
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
PYTHON="${PYTHON:-python3.11}"

# torch is installed first, alone: this machine's pip configuration serves the +cpu wheel of this version
# (a CUDA build is never wanted here; the check at the end refuses one).
TORCH_PIN="torch==2.13.0"
PINS=(
  "hierarchy-transformers==0.1.1"
  "sentence-transformers==3.4.1"
  "transformers==4.48.3"
  "numpy==2.2.6"
  "scipy==1.13.1"
  "geoopt==0.5.0"
  "deeponto==0.9.3"
  "accelerate==1.16.0"
  "datasets==5.0.1"
)
STAMP="$VENV/.hit-setup-complete"
WANT="$(printf '%s\n' "$PYTHON" "$TORCH_PIN" "${PINS[@]}")"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/python" ]]; then
  echo "HiT venv complete: $VENV"
  exit 0
fi

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install "$TORCH_PIN"
"$VENV/bin/python" -m pip install "$TORCH_PIN" "${PINS[@]}"

"$VENV/bin/python" - <<'PY'
import torch
import sentence_transformers
import transformers

assert torch.version.cuda is None, f"expected a CPU torch build, got CUDA {torch.version.cuda}"
assert sentence_transformers.__version__.startswith("3.4."), sentence_transformers.__version__
assert transformers.__version__.startswith("4.48."), transformers.__version__
import hierarchy_transformers  # noqa: F401  (the model package imports without deeponto's JVM)

print("torch", torch.__version__, "| sentence-transformers", sentence_transformers.__version__,
      "| transformers", transformers.__version__)
PY
printf '%s' "$WANT" >"$STAMP"
echo "HiT venv ready: $VENV"
