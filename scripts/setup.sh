#!/usr/bin/env bash
# Idempotent set-up: creates .venv, installs torch first (or keeps the one already there), then the
# project pinned against that torch so the installer can never swap it. Re-runs are instant when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
# Optional dependency groups of pyproject.toml; "dev" (tests, lint, offline test assets) unless set.
# EXTRAS= (empty) installs only what running the project needs: the Docker images do that.
EXTRAS=${EXTRAS-dev}
VENV=.venv
stamp="$VENV/.setup-$( (cat pyproject.toml scripts/setup.sh; echo "$EXTRAS") | sha1sum | cut -c1-12)"
[ -f "$stamp" ] && exit 0

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# This machine's pip config lists local mirrors that warn on every package; keep real errors only.
quiet() { "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
# uv installs the wheels (torch's CUDA build: 5 GB unpacked) on every core, where pip unpacks them one file at a
# time: torch 166 s → 19 s, the project 129 s → 9 s on a fresh clone at load 7.5 (docs/results.md, issue 28).
# It reads no pip configuration, so it gets pip's indexes, links and constraints, and like pip takes the
# best version across them (a version on several indexes comes from the first one named: pip's extra indexes).
quiet "${pip[@]}" install "uv==0.13.8"
mapfile -t sources < <("$VENV/bin/python" -m pip config list 2>/dev/null | "$VENV/bin/python" -c '
import ast, sys
flags = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
         "constraint": "--constraint"}
for line in sys.stdin:
    key, _, value = line.strip().partition("=")
    flag = flags.get(key.rpartition(".")[2])
    for item in ast.literal_eval(value).split() if flag else ():
        print(f"{flag}={item}")
')
install=("$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --index-strategy unsafe-best-match "${sources[@]}")
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC (set TORCH_SPEC or pre-install your own torch in .venv to change)"
  # shellcheck disable=SC2086
  "${install[@]}" $TORCH_SPEC
fi
constraints="$VENV/torch-constraints.txt"
"$VENV/bin/python" - >"$constraints" <<'PY'
from importlib.metadata import version  # not `import torch`: 14 s before its bytecode is compiled
# The public version (no "+cu130" label): the installer matches the installed build against it and keeps it.
print(f"torch=={version('torch').split('+')[0]}\ntorchvision=={version('torchvision').split('+')[0]}")
PY
echo "setup: installing the project (torch kept at $(head -1 "$constraints"))"
"${install[@]}" -c "$constraints" -e ".${EXTRAS:+[$EXTRAS]}"
if [[ ",$EXTRAS," == *,dev,* ]]; then
  # Only clip_client.py is used (the compatibility test); its full dependency tree is not wanted.
  "${install[@]}" --no-deps "clip-retrieval==2.45.0"
fi
# Bytecode for every installed module, compiled on every core (pip did it on one; uv does not by default).
# Like pip, skip the few files that do not compile (test data written for other Python versions).
"$VENV/bin/python" -c 'import compileall, sysconfig; compileall.compile_dir(sysconfig.get_path("purelib"), quiet=2, workers=0)'
rm -f "$VENV"/.setup-*
touch "$stamp"
