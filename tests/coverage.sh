#!/usr/bin/env bash
# `make coverage`: the tests with coverage measured, in an environment of its own
# (.venv-coverage), so .venv's release build of the engine stays as it is.
#
#   Python: pytest-cov, the processes the tests start included (the CLI, agents, serve mode:
#           coverage's subprocess patch, configured in tests/coverage.toml).
#   Engine: LLVM source-based coverage (cargo-llvm-cov) of the Rust tests and of every Python
#           process that loaded the instrumented engine.
#
# Arguments go to pytest (default: the whole suite). Reports: coverage/python/index.html and
# coverage/rust/html/index.html; the totals are printed last. The exit status is the tests'.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-coverage

make --no-print-directory VENV="$VENV" venv || exit 1
if ! cargo llvm-cov --version >/dev/null 2>&1; then
    echo "installing cargo-llvm-cov (the crate registry)"
    cargo install cargo-llvm-cov --locked --quiet || exit 1
fi
# llvm-cov and llvm-profdata of the compiler's own LLVM.
rustup component add llvm-tools-preview >/dev/null 2>&1 \
    || { echo "cargo-llvm-cov needs rustup's llvm-tools-preview component"; exit 1; }

export VIRTUAL_ENV="$PWD/$VENV" PATH="$PWD/$VENV/bin:$PATH"
# RUSTFLAGS with -C instrument-coverage, a target directory of its own, and where each process
# writes its profile.
source <(cargo llvm-cov show-env --sh)
cargo llvm-cov clean --workspace
rm -rf coverage .coverage .coverage.*
mkdir -p coverage
# Processes the tests start in directories of their own write their data here too.
export LOADPILOT_COVERAGE_DATA="$PWD/.coverage" COVERAGE_RCFILE="$PWD/tests/coverage.toml"

echo "building the engine, instrumented"
maturin develop --release --quiet || exit 1

cargo test --release --workspace --exclude loadpilot-python
rust_tests=$?
if [ $# -eq 0 ]; then set -- tests; fi
python -m pytest --cov --cov-config="$COVERAGE_RCFILE" --cov-report= -p no:cacheprovider "$@"
python_tests=$?
# Data files of processes pytest-cov did not combine (it combines those it knows of).
python -m coverage combine --append -q >/dev/null 2>&1 || true

# A process killed while it wrote its profile (the fault tests kill agents) leaves a torn file
# that would fail the whole merge: left out, and counted.
profdata="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"
torn=0
for f in "$(dirname "$LLVM_PROFILE_FILE")"/*.profraw; do
    [ -e "$f" ] || continue
    "$profdata" show "$f" >/dev/null 2>&1 || { rm -f "$f"; torn=$((torn + 1)); }
done
[ $torn -eq 0 ] || echo "$torn engine profiles torn by a killed process, left out"

python -m coverage html -q -d coverage/python
cargo llvm-cov report --release --html --output-dir coverage/rust >/dev/null
echo
echo "Python, loadpilot/ (statements and branches): $(python -m coverage report --format=total)%"
cargo llvm-cov report --release --summary-only | awk '$1 == "TOTAL" {
    printf "Engine, engine/ (the Rust tests and the Python tests): lines %s, functions %s, regions %s\n", $10, $7, $4 }'
echo "reports: coverage/python/index.html, coverage/rust/html/index.html"
[ $rust_tests -eq 0 ] && [ $python_tests -eq 0 ]
