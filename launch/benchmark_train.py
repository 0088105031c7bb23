r"""Steady-state training throughput and peak memory on the current backend.

  python launch/benchmark_train.py --presets=quick,paper --steps=20
  python launch/benchmark_train.py --presets=resnet+quick,sngan+quick,cifar+quick
  python launch/benchmark_train.py --presets=finetune:dip_diffaug+stylegan2+quick

For each preset of configs/ps_pretrain.py ('+' stands for the ',' of the config
file's presets: 'resnet+quick' is 'resnet,quick'), or any CONFIG:PRESET of configs/
(a finetune from random weights: its data source is read and, for DIP, its priors
computed first): builds the sharded train step exactly as training does (synthesis
or real-data sampling, DiffAugment, R1 and path-length included on their schedule),
compiles it, then times `--steps` steps after `--warmup` steps and
prints images/s, ms/step, the memory XLA plans for the largest step variant, and
the measured peak (device allocator on GPU/TPU, process RSS on CPU).
`--compile_only` stops after the memory plan: a quick "does it fit?" check.
"""

import ast
import resource
import time

from absl import app
from absl import flags
import jax

from gantransfer_jax import config_files
from gantransfer_jax import parallel
from gantransfer_jax import train

_PRESETS = flags.DEFINE_list("presets", ["quick", "paper"],
                             "ps_pretrain presets ('paper' = default; 'resnet+quick' = "
                             "'resnet,quick') or CONFIG:PRESET of configs/.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 4, "Untimed steps (compiles every step variant).")
_COMPILE_ONLY = flags.DEFINE_bool(
    "compile_only", False, "Only compile and print XLA's memory analysis of each step "
    "variant (does a preset fit this device?), without running steps.")
_SET = flags.DEFINE_multi_string(
    "set", [], "Config overrides KEY=VALUE (e.g. --set=stylegan2.channel_max=64), applied "
    "to every preset; values are parsed as Python literals when possible.")


def peak_memory_gib() -> tuple[float, str]:
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**30, "device peak"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process max RSS"


def compiled_memory_gib(setup, config) -> float:
  """The largest XLA-planned footprint (arguments + outputs + temporaries) of any step variant."""
  footprints = []
  for flags_ in ({"do_r1": True, "do_pl": True}, {"do_r1": True, "do_pl": False},
                 {"do_r1": False, "do_pl": False}):
    if (flags_["do_pl"] and not config.loss.pl_weight) or (
        flags_["do_r1"] and not config.loss.r1_gamma):
      continue
    analysis = setup.train_step.lower(setup.state, setup.data, **flags_).compile()
    analysis = analysis.memory_analysis()
    footprints.append(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                      + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
  return max(footprints) / 2**30


def benchmark(preset: str) -> dict:
  name = "" if preset == "paper" else preset.replace("+", ",")
  config = config_files.get_config(name if ":" in name else f"ps_pretrain:{name}")
  for assignment in _SET.value:
    key, value = assignment.split("=", 1)
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass  # A bare string.
    config.update_from_flattened_dict({key: value})
  setup = train.build(config, parallel.create_mesh())
  state, data, step_fn = setup.state, setup.data, setup.train_step
  planned = compiled_memory_gib(setup, config)
  if _COMPILE_ONLY.value:
    return dict(preset=preset, resolution=config.resolution, batch=config.batch_size,
                img_per_sec=float("nan"), ms_per_step=float("nan"), warmup_s=float("nan"),
                planned=planned, memory=float("nan"), memory_kind="not run")
  compile_start = time.perf_counter()
  for step in range(_WARMUP.value):
    state, metrics = step_fn(state, data, **train.regularizer_schedule(step, config))
  jax.block_until_ready(metrics)
  warmup_s = time.perf_counter() - compile_start
  start = time.perf_counter()
  for step in range(_WARMUP.value, _WARMUP.value + _STEPS.value):
    state, metrics = step_fn(state, data, **train.regularizer_schedule(step, config))
  jax.block_until_ready(metrics)
  elapsed = time.perf_counter() - start
  memory, memory_kind = peak_memory_gib()
  return dict(preset=preset, resolution=config.resolution, batch=config.batch_size,
              img_per_sec=config.batch_size * _STEPS.value / elapsed,
              ms_per_step=1000 * elapsed / _STEPS.value, warmup_s=warmup_s,
              planned=planned, memory=memory, memory_kind=memory_kind)


def main(argv):
  del argv
  device = jax.devices()[0]
  print(f"backend {device.platform} ({device.device_kind}), {jax.device_count()} device(s)")
  width = max(8, *(len(p) for p in _PRESETS.value))
  print(f"{'preset':>{width}} {'res':>5} {'batch':>5} {'img/s':>9} {'ms/step':>9} "
        f"{'warmup s':>9} {'XLA GiB':>8} {'peak GiB':>9}")
  for preset in _PRESETS.value:
    r = benchmark(preset)
    print(f"{r['preset']:>{width}} {r['resolution']:>5} {r['batch']:>5} {r['img_per_sec']:>9.1f} "
          f"{r['ms_per_step']:>9.1f} {r['warmup_s']:>9.1f} {r['planned']:>8.2f} "
          f"{r['memory']:>9.2f} ({r['memory_kind']})",
          flush=True)


if __name__ == "__main__":
  app.run(main)
