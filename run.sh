#!/usr/bin/env bash
# Set up heldout in ./.venv (once; again when pyproject.toml or constraints.txt change), then
#   ./run.sh flagship [args]   run the grokking comparison and write its HTML report
#   ./run.sh test [args]       lint, import contracts, types, docs build, doctests and the
#                              test suite (what CI runs)
#   ./run.sh heldout ARGS      any heldout command
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=.venv

setup() {
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "heldout needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
    exit 1
  fi
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  local stamp
  stamp=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
  if [ "$(cat "$VENV/.heldout-setup" 2>/dev/null)" != "$stamp" ] ||
     ! "$VENV/bin/python" -c 'import heldout' 2>/dev/null; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # torch first and pinned, so nothing else can pull a multi-GB CUDA build
    "$VENV/bin/python" -m pip install --quiet -c constraints.txt "torch==2.13.0"
    "$VENV/bin/python" -m pip install --quiet -c constraints.txt -e ".[test]"
    echo "$stamp" > "$VENV/.heldout-setup"
  fi
}

cmd=${1:-flagship}
shift || true
setup
case "$cmd" in
  flagship) exec "$VENV/bin/heldout" flagship "$@" ;;
  test)
    # lint, layer contracts, types, the docs site, doctests, then the tests
    "$VENV/bin/ruff" check src tests bench docs
    "$VENV/bin/lint-imports"
    "$VENV/bin/mypy"
    site=$(mktemp -d)
    NO_MKDOCS_2_WARNING=1 "$VENV/bin/mkdocs" build --strict --quiet -d "$site"
    rm -rf "$site"
    "$VENV/bin/python" -m pytest -q -p no:xdist --doctest-modules src/heldout
    exec "$VENV/bin/python" -m pytest -n 2 "$@" ;;
  heldout) exec "$VENV/bin/heldout" "$@" ;;
  setup) ;;
  *) echo "usage: ./run.sh [flagship|test|heldout ARGS|setup]" >&2; exit 2 ;;
esac
