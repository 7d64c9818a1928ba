#!/usr/bin/env bash
# The main job on the embedded mini corpus: install what is missing, then run the mini recipe
# (examples/mini/run.sh). Arguments go to the recipe, e.g. `bash scripts/demo.sh --stage 2`.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/setup.sh"
exec bash "$REPO/examples/mini/run.sh" "$@"
