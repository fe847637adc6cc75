#!/usr/bin/env bash
# Set up, then run the main job on bundled defaults: Table 1 at the reduced `quick` profile
# (first 50 images, 20 PGD steps, 1 restart; see README). For the faithful setting: scbench run suites/table1.yaml
# setup.sh installs into the active virtual environment, else into .venv/ in this clone (created
# once; a second run reuses it and installs nothing). Never into the system Python.
set -euo pipefail
cd "$(dirname "$0")"
bin=$(bash setup.sh | tail -n 1)
export PATH="$bin:$PATH"
scbench run suites/table1.yaml --profile quick "$@"
