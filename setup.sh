#!/usr/bin/env bash
# Installs robust_bench_sc and its pinned dependencies.
#
# Where: the active virtual environment if there is one ($VIRTUAL_ENV), else the project's own
# `.venv/` in this clone (created here; ignored by git). Never the system Python.
# What:  `pip install -c requirements/constraints.txt -e ".[EXTRAS]"`: the lock file pins every
#        transitive version CI tested (see requirements/README.md to refresh it), torch 2.13.0 is
#        the CPU wheel, torchattacks goes in with --no-deps (requirements/no-deps.txt: its own
#        requirements pull torchvision and a CUDA torch).
# Again: a second run with the same pyproject.toml, lock file, extras and clone installs
#        nothing (a stamp in the environment records what was installed).
#
# SCBENCH_EXTRAS=test,ray also installs the test tools and the optional Ray executor.
# Prints the environment's bin folder on its last line (run.sh and test.sh put it on PATH).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd -P)
EXTRAS=${SCBENCH_EXTRAS:-test}
if [[ -n "${VIRTUAL_ENV:-}" ]]; then
  VENV=$VIRTUAL_ENV
else
  VENV=$ROOT/.venv
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup.sh: creating the project environment $VENV" >&2
    "${PYTHON:-python3}" -m venv "$VENV"
  fi
fi
PY=$VENV/bin/python
STAMP=$VENV/.scbench-installed
inputs=$(cat pyproject.toml requirements/constraints.txt requirements/no-deps.txt | sha256sum | cut -c1-16)
installed() {  # a stamp line of the same inputs and clone whose extras include every one asked for
  [[ -f "$STAMP" ]] || return 1
  local line extra ok
  while read -r line; do
    [[ "$line" == "$inputs root=$ROOT extras="* ]] || continue
    ok=1
    for extra in ${EXTRAS//,/ }; do
      [[ ",${line##* extras=}," == *",$extra,"* ]] || ok=0
    done
    [[ $ok == 1 ]] && return 0
  done < "$STAMP"
  return 1
}
if installed; then
  echo "setup.sh: $VENV is up to date (nothing installed)" >&2
else
  pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@" >&2; }
  pip_install -c requirements/constraints.txt "torch==2.13.0"
  pip_install -c requirements/constraints.txt -e ".[${EXTRAS}]"
  pip_install --no-deps -r requirements/no-deps.txt
  "$PY" -c "import robust_bench_sc, torch, foolbox, art, pyautoattack, torchattacks, click; print('robust_bench_sc', robust_bench_sc.__version__, '| torch', torch.__version__)" >&2
  # Extras installed earlier stay installed: a later run asking for fewer installs nothing.
  echo "$inputs root=$ROOT extras=$EXTRAS" >> "$STAMP"
fi
echo "$VENV/bin"
