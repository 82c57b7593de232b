#!/usr/bin/env bash
# Checks the Binder recipe on this machine: a clean copy of the committed tree, a fresh virtual
# environment standing in for environment.yml (Python from the system, Rust from this machine's
# toolchain, the rest from PyPI), binder/postBuild as Binder runs it, then every tutorial under
# nbval in that environment. Used by `make check-binder`; takes a few minutes (a release build).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git clone --quiet "$repo" "$work/repo"
python3 -m venv "$work/env"
export PATH="$work/env/bin:$PATH"
export CARGO_HOME="$work/cargo"   # postBuild empties the registry cache: keep it away from ours
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "jupyterlab>=4" "ipywidgets>=8" "nbval>=0.11" "pytest>=8"
(cd "$work/repo" && bash binder/postBuild)
test ! -e "$work/repo/target" || { echo "postBuild left the build cache behind"; exit 1; }
test ! -e "$CARGO_HOME/registry" || { echo "postBuild left the crate cache behind"; exit 1; }
# From outside the checkout, so the installed package is imported, not the source tree.
(cd "$work" && python -c "import loadpilot as lp; print('loadpilot', lp.__version__, lp.__file__)")
cd "$work/repo"
python -m pytest --nbval-lax -p no:cacheprovider -q notebooks
echo "binder recipe: OK"
