#!/usr/bin/env bash
# Create bench/.venv: CPU torch first (a bare `torch` requirement would pull the CUDA build),
# then mlpkit (editable) and the peers of bench/requirements.txt. The peers never become
# mlpkit dependencies; they live in this environment only.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m venv bench/.venv
bench/.venv/bin/pip install --quiet torch==2.13.0
bench/.venv/bin/pip install --quiet -e . -r bench/requirements.txt
KERAS_BACKEND=torch bench/.venv/bin/python - <<'PY'
import importlib

for name in ("torch", "mlpkit", "sklearn", "skorch", "lightning", "keras"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as exc:  # a peer that does not import is skipped by the bench
        print(f"{name} does not import: {type(exc).__name__}: {exc}")
PY
