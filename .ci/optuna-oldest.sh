#!/usr/bin/env bash
# The Optuna compatibility job: the tests of Optuna's internals (tests/test_compat.py) and
# Optuna's own sampler suites on HybridSampler (tests/test_integration_sampler.py), under the
# OLDEST Optuna release that pyproject.toml admits (the main job runs the newest).
#
# Usage: bash .ci/optuna-oldest.sh [PYTHON]     (default: $PYTHON, else python3)
#
# It makes a throwaway venv, installs a copy of the project into it with optuna pinned to
# OPTUNA_OLDEST (and the optuna-integration of the same release, plus pytest), runs the two
# test files in that copy (so nothing is written into the work tree) and removes it all.
# OPTUNA_OLDEST must be the lower bound of SUPPORTED_OPTUNA (a test in tests/test_compat.py
# reads this line). TORCH_SPEC picks torch (default: the CPU build 2.13.0, on local disk).
set -euo pipefail

OPTUNA_OLDEST="4.8.0"
OPTUNA_INTEGRATION_SPEC="${OPTUNA_INTEGRATION_SPEC:-optuna-integration==$OPTUNA_OLDEST}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

python=${1:-${PYTHON:-python3}}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/optuna-oldest.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$SECONDS

echo "== optuna-oldest: venv with $("$python" --version 2>&1), optuna==$OPTUNA_OLDEST"
"$python" -m venv "$work/venv"
vpy="$work/venv/bin/python"

# A copy of the project without its venv, git data and build leftovers.
mkdir "$work/src"
tar -C "$root" --exclude=./.venv --exclude=./.git --exclude='*.egg-info' --exclude=./build \
    --exclude='__pycache__' --exclude=./.pytest_cache -cf - . | tar -C "$work/src" -xf -

# torch first, so the project's "torch>=2.2" takes it rather than a multi-GB CUDA build.
"$vpy" -m pip install --quiet "$TORCH_SPEC"
"$vpy" -m pip install --quiet "$work/src" "optuna==$OPTUNA_OLDEST" "$OPTUNA_INTEGRATION_SPEC" \
    "pytest>=7.4"
installed=$("$vpy" -c "import optuna; print(optuna.__version__)")
if [ "$installed" != "$OPTUNA_OLDEST" ]; then
    echo "optuna-oldest: pip installed optuna $installed, not $OPTUNA_OLDEST" >&2
    exit 1
fi
echo "== optuna-oldest: optuna $installed," \
     "optuna-integration $("$vpy" -c "import optuna_integration as o; print(o.__version__)")," \
     "torch $("$vpy" -c "import torch; print(torch.__version__)")" \
     "(installed in $((SECONDS - start)) s)"

cd "$work/src"
# tests/test_compat.py also checks that the installed optuna is inside SUPPORTED_OPTUNA.
"$vpy" -m pytest -q -p no:cacheprovider tests/test_compat.py tests/test_integration_sampler.py
echo "== optuna-oldest: passed under optuna $installed in $((SECONDS - start)) s"
