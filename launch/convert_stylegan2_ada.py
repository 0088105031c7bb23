r"""Converts an official StyleGAN2-ADA (PyTorch) checkpoint into a workdir of ours, torch-free.

  # A network pickle (e.g. NVIDIA's transfer sources, ffhq-res256-mirror-paper256-noaug.pkl):
  python launch/convert_stylegan2_ada.py --src network-snapshot-025000.pkl --out workdirs/ffhq256
  # A state dict records no minibatch-stddev group: paper256 / paper512 models use 8.
  python launch/convert_stylegan2_ada.py --src state_dict.pt --mbstd_group_size=8 --out workdirs/x
  python -m gantransfer_jax.main --config=configs/finetune.py:transfergan \
      --config.init_checkpoint=workdirs/ffhq256 --config.data.source=folder:/my/images

--src: a network pickle (needs neither torch nor the authors' dnnlib/torch_utils) or a
state dict ('G_ema.synthesis.b4.conv1.weight', ... or {'G': ..., 'D': ..., 'G_ema': ...}).
The architecture is inferred from the tensors; the flags below only pin (and check) it.
A network pickle records D's minibatch-stddev group size and conv_clamp; for a state
dict give them (--mbstd_group_size; --conv_clamp=none for official --fp32 runs), else
the base config's 4 and 256 apply. The model config starts from configs/ps_pretrain.py's
defaults. See gantransfer_jax/convert/stylegan2_ada.py for the parameter mapping.
"""

import os

from absl import app
from absl import flags

from gantransfer_jax import config_files
from gantransfer_jax.convert import stylegan2_ada
from gantransfer_jax.models import stylegan2

_SRC = flags.DEFINE_string("src", None, "Network pickle or state dict (.pkl/.pt/.pth).",
                           required=True)
_OUT = flags.DEFINE_string("out", None, "New workdir to write the checkpoint into.",
                           required=True)
_BASE_CONFIG = flags.DEFINE_string(
    "base_config", "ps_pretrain",
    "CONFIG[:PRESET] (a configs/ name or a .py path) whose defaults complete the model "
    "config.")
_ARCHITECTURE_FLAGS = {
    name: flags.DEFINE_integer(name, None, f"{name} (default: inferred from the tensors).")
    for name in ("resolution", "z_dim", "w_dim", "mapping_layers", "channel_base",
                 "channel_max")
}
_MBSTD_GROUP_SIZE = flags.DEFINE_integer(
    "mbstd_group_size", None, "D's minibatch-stddev group size (default: the pickle's "
    "record; for a state dict the base config's 4). Official paper256/paper512: 8.")
_CONV_CLAMP = flags.DEFINE_string(
    "conv_clamp", None, "A number, or 'none' for official --fp32 runs (default: the "
    "pickle's record; for a state dict the base config's 256).")


def _runtime_fields() -> dict:
  fields = {}
  if _MBSTD_GROUP_SIZE.value is not None:
    fields["mbstd_group_size"] = _MBSTD_GROUP_SIZE.value
  if _CONV_CLAMP.value is not None:
    text = _CONV_CLAMP.value.strip().lower()
    try:
      fields["conv_clamp"] = None if text == "none" else float(text)
    except ValueError:
      raise app.UsageError(f"--conv_clamp must be a number or 'none', got "
                           f"{_CONV_CLAMP.value!r}") from None
  return fields


def main(argv):
  del argv
  overrides = {name: flag.value for name, flag in _ARCHITECTURE_FLAGS.items()}
  try:
    config = stylegan2_ada.convert_file(
        _SRC.value, _OUT.value, config_files.get_config(_BASE_CONFIG.value),
        runtime_fields=_runtime_fields(), **overrides)
  except (FileExistsError, stylegan2_ada.LayoutError) as error:
    raise SystemExit(f"error: {error}") from None
  model = config.stylegan2
  shapes = stylegan2_ada.expected_variables(config)
  print(f"wrote {os.path.abspath(_OUT.value)}: {config.resolution}x{config.resolution}, "
        f"z_dim {model.z_dim}, w_dim {model.w_dim}, {model.mapping_layers} mapping layers, "
        f"channel_base {model.channel_base}, channel_max {model.channel_max}, "
        f"mbstd_group_size {model.mbstd_group_size}, conv_clamp {model.conv_clamp}; "
        f"G {stylegan2.count_params(shapes['G']['params']):,} and "
        f"D {stylegan2.count_params(shapes['D']['params']):,} parameters; G <- 'G', "
        "G_ema and its w_avg / noise_const buffers <- 'G_ema', D <- 'D'.\n"
        f"Finetune with --config.init_checkpoint={_OUT.value}")


if __name__ == "__main__":
  app.run(main)
