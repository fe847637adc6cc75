#!/usr/bin/env bash
# Set up, then run the main job on bundled defaults: Table 1 at the reduced `quick` profile
# (first 50 images, 20 PGD steps, 1 restart; see README). For the faithful setting: scbench run suites/table1.yaml
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
scbench run suites/table1.yaml --profile quick "$@"
