#!/usr/bin/env bash
# The README's worked example, on CPU: Primitives-PS pretraining (quick preset), then
# 100-shot ORL-faces finetuning from scratch vs from the PS model (TransferGAN, FreezeD,
# and FreezeD + DIP's StyleGAN2 variant), each scored by FID/KID/PR against all 400 ORL
# faces. Usage:
#   bash launch/worked_example.sh [WORKDIR_ROOT] [FINETUNE_STEPS]
set -euo pipefail
ROOT=${1:-workdirs/example}
STEPS=${2:-1000}
PY=${PYTHON:-.venv/bin/python}
$PY -m gantransfer_jax.assets inception
$PY -m gantransfer_jax.assets mobilenet_v2  # DIP's priors.
$PY -m gantransfer_jax.main --config=configs/ps_pretrain.py:quick --workdir="$ROOT/ps_quick"
COMMON=(--config.total_steps="$STEPS" --config.eval_every="$STEPS" --config.eval_num_images=400
        --config.data.source=orl_faces --config.data.num_images=100)
$PY -m gantransfer_jax.main --config=configs/finetune.py:scratch,quick \
    --workdir="$ROOT/scratch" "${COMMON[@]}"
for method in transfergan freezed; do
  $PY -m gantransfer_jax.main --config=configs/finetune.py:$method,quick \
      --config.init_checkpoint="$ROOT/ps_quick" --workdir="$ROOT/$method" "${COMMON[@]}"
done
# DIP on top of the FreezeD run: its batch and DiffAugment, so that the priors are the
# only difference (the paper's FreezeD + DIP recipe has batch 8 and no DiffAugment).
$PY -m gantransfer_jax.main --config=configs/finetune.py:dip_freezed,stylegan2,quick \
    --config.init_checkpoint="$ROOT/ps_quick" --workdir="$ROOT/freezed_dip" "${COMMON[@]}" \
    --config.batch_size=16 --config.augment=color,translation,cutout
$PY launch/collect_results.py "$ROOT/scratch" "$ROOT/transfergan" "$ROOT/freezed" \
    "$ROOT/freezed_dip"
