#!/usr/bin/env bash
# Set up, then run the default test suite on the CPU (what CI runs through .ci/run).
# Slow checks are marked `slow` and run separately: python -m pytest -m slow
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
python3 -m pytest -q -p no:cacheprovider "$@"
