#!/usr/bin/env bash
# Run the test suite against the lmms-rekv installed in VENV (a wheel install), not the
# source tree: pytest runs from an empty folder so the checkout's lmms_rekv/ cannot shadow
# the installed package, and the tests check that they import it from site-packages.
#   bash scripts/test_installed.sh VENV [pytest args...]
set -euo pipefail
VENV=$(cd "$1" && pwd); shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN=$(mktemp -d -t rekv-installed-XXXX)
trap 'rm -rf "$RUN"' EXIT
cd "$RUN"
export REKV_EXPECT_INSTALLED=1 HF_HOME="${HF_HOME:-$RUN/hf}" HF_HUB_OFFLINE=1
"$VENV/bin/python" -m lmms_rekv.commands.doctor
"$VENV/bin/python" -m pytest -p no:cacheprovider --rootdir "$ROOT" -c "$ROOT/pyproject.toml" "$ROOT/tests" "$@"
