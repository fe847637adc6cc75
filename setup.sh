#!/usr/bin/env bash
# Installs robust_bench_sc and its pinned dependencies into the current Python (3.11+).
# torch is pinned to 2.13.0 (a CPU wheel); torchattacks goes in with --no-deps because its
# own requirements pull torchvision and a CUDA build of torch.
set -euo pipefail
# SCBENCH_EXTRAS=test,ray also installs the optional Ray executor.
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
"$PY" -m pip install -q --disable-pip-version-check -e ".[${SCBENCH_EXTRAS:-test}]"
"$PY" -m pip install -q --disable-pip-version-check --no-deps "torchattacks==3.5.1"
"$PY" -c "import robust_bench_sc, torch, foolbox, art, pyautoattack, torchattacks; print('robust_bench_sc', robust_bench_sc.__version__, '| torch', torch.__version__)"
