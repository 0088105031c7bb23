#!/usr/bin/env bash
# The README's worked example, on CPU: Primitives-PS pretraining (quick preset), then
# 100-shot ORL-faces finetuning from scratch vs from the PS model (TransferGAN, FreezeD),
# each scored by FID/KID/PR against all 400 ORL faces. Usage:
#   bash launch/worked_example.sh [WORKDIR_ROOT] [FINETUNE_STEPS]
set -euo pipefail
ROOT=${1:-workdirs/example}
STEPS=${2:-1000}
PY=${PYTHON:-.venv/bin/python}
$PY -m gantransfer_jax.assets inception
$PY -m gantransfer_jax.main --config=configs/ps_pretrain.py:quick --workdir="$ROOT/ps_quick"
COMMON=(--config.total_steps="$STEPS" --config.eval_every="$STEPS" --config.eval_num_images=400
        --config.data.source=orl_faces --config.data.num_images=100)
$PY -m gantransfer_jax.main --config=configs/finetune.py:scratch,quick \
    --workdir="$ROOT/scratch" "${COMMON[@]}"
for method in transfergan freezed; do
  $PY -m gantransfer_jax.main --config=configs/finetune.py:$method,quick \
      --config.init_checkpoint="$ROOT/ps_quick" --workdir="$ROOT/$method" "${COMMON[@]}"
done
$PY launch/collect_results.py "$ROOT/scratch" "$ROOT/transfergan" "$ROOT/freezed"
