#!/usr/bin/env bash
# Install what is missing (idempotent), lint, then run the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k corpus -x`; the fast tier (unit tests, no
# training runs) is `bash scripts/test.sh -m "not slow"`. Markers and options: pytest.ini; lint: ruff.toml.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/setup.sh"
cd "$REPO"
export PYTHONHASHSEED=0 OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if ! .venv/bin/ruff check --quiet .; then
  echo "ruff found the problems above: fix them (many with \`.venv/bin/ruff check --fix .\`)" >&2
  exit 1
fi
set +e
.venv/bin/python -m pytest tests -q -p no:cacheprovider --durations=15 "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then echo "no tests were collected" >&2; exit 1; fi
exit "$rc"
