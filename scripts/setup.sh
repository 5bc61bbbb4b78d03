#!/usr/bin/env bash
# Idempotent set-up: creates .venv, installs torch first (or keeps the one already there), then the
# project pinned against that torch so pip can never swap it. Re-runs are instant when nothing changed.
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
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC (set TORCH_SPEC or pre-install your own torch in .venv to change)"
  # shellcheck disable=SC2086
  quiet "${pip[@]}" install $TORCH_SPEC
fi
constraints="$VENV/torch-constraints.txt"
"$VENV/bin/python" - >"$constraints" <<'PY'
import torch, torchvision
# The public version (no "+cu130" label): pip matches the installed build against it and keeps it.
print(f"torch=={torch.__version__.split('+')[0]}\ntorchvision=={torchvision.__version__.split('+')[0]}")
PY
echo "setup: installing the project (torch kept at $(head -1 "$constraints"))"
quiet "${pip[@]}" install -c "$constraints" -e ".${EXTRAS:+[$EXTRAS]}"
if [[ ",$EXTRAS," == *,dev,* ]]; then
  # Only clip_client.py is used (the compatibility test); its full dependency tree is not wanted.
  quiet "${pip[@]}" install --no-deps "clip-retrieval==2.45.0"
fi
rm -f "$VENV"/.setup-*
touch "$stamp"
