r"""Steady-state training throughput and peak memory on the current backend.

  python launch/benchmark_train.py --presets=quick,paper --steps=20
  python launch/benchmark_train.py --presets=resnet+quick,sngan+quick,cifar+quick
  python launch/benchmark_train.py --presets=finetune:dip_diffaug+stylegan2+quick

For each preset of configs/ps_pretrain.py ('+' stands for the ',' of the config
file's presets: 'resnet+quick' is 'resnet,quick'), or any CONFIG:PRESET of configs/
(a finetune from random weights: its data source is read and, for DIP, its priors
computed first): builds the sharded train step exactly as training does (synthesis
or real-data sampling, DiffAugment, R1 and path-length included on their schedule),
compiles each step variant the preset's lazy schedule runs (R1 x path length; all
four with `--all_variants`; one, 'cond', with `--set=regularizer_dispatch=cond`) and
prints its compile time and the memory XLA plans for it, then times `--steps` steps
after `--warmup` steps with those executables and prints images/s, ms/step, the
largest planned footprint, and the measured peak (device allocator on GPU/TPU,
process RSS on CPU). The last line is
`planned peak GiB: X`, the maximum over all presets and variants.
`--compile_only` stops after the memory plan: a quick "does it fit?" check.
"""

import math
import resource
import time
from typing import Any, NamedTuple

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
_WARMUP = flags.DEFINE_integer("warmup", 4, "Untimed steps after compilation.")
_COMPILE_ONLY = flags.DEFINE_bool(
    "compile_only", False, "Only compile and print XLA's memory analysis of each step "
    "variant (does a preset fit this device?), without running steps.")
_ALL_VARIANTS = flags.DEFINE_bool(
    "all_variants", False, "Compile all four (R1, path length) combinations, not only "
    "those the preset's lazy schedule runs.")
_SET = flags.DEFINE_multi_string(
    "set", [], "Config overrides KEY=VALUE (e.g. --set=stylegan2.channel_max=64), applied "
    "to every preset; values are parsed as Python literals when possible.")


def peak_memory_gib() -> tuple[float, str]:
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**30, "device peak"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process max RSS"


def is_cond(config) -> bool:
  """One program with the regularisers behind lax.cond (train.CondTrainStep)."""
  return config.get("regularizer_dispatch", "static") == "cond"


def step_variants(config) -> list[dict[str, bool]]:
  """The (R1, path length) combinations a run compiles: its lazy schedule over one
  period (lcm of the intervals), or all four with --all_variants; with
  regularizer_dispatch='cond' one program (no static flags) serves them all."""
  if is_cond(config):
    return [{}]
  if _ALL_VARIANTS.value:
    return [{"do_r1": r1, "do_pl": pl} for r1 in (True, False) for pl in (True, False)]
  period = math.lcm(config.loss.get("r1_interval", 1), config.loss.get("pl_interval", 1))
  variants = []
  for step in range(period):
    flags_ = train.regularizer_schedule(step, config)
    if flags_ not in variants:
      variants.append(flags_)
  return variants


def variant_name(flags_: dict[str, bool]) -> str:
  if not flags_:
    return "cond"
  return "+".join(n for n, on in (("R1", flags_["do_r1"]), ("PL", flags_["do_pl"])) if on) or "plain"


class Variant(NamedTuple):
  flags: dict[str, bool]
  compiled: Any           # The executable, called as compiled(state, data).
  compile_s: float        # Lowering + XLA compilation, wall seconds.
  planned_gib: float      # XLA's planned footprint: arguments + outputs + temporaries - aliased.


def compile_variants(setup, config) -> list[Variant]:
  """Compiles every step variant once; the executables are reused for the timed steps."""
  variants = []
  for flags_ in step_variants(config):
    start = time.perf_counter()
    compiled = setup.train_step.lower(setup.state, setup.data, **flags_).compile()
    compile_s = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    planned = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
    variants.append(Variant(flags_, compiled, compile_s, planned / 2**30))
  return variants


def benchmark(preset: str) -> dict:
  name = "" if preset == "paper" else preset.replace("+", ",")
  config = config_files.get_config(name if ":" in name else f"ps_pretrain:{name}")
  config_files.apply_overrides(config, _SET.value)
  setup = train.build(config, parallel.create_mesh())
  variants = compile_variants(setup, config)
  result = dict(preset=preset, resolution=config.resolution, batch=config.batch_size,
                variants=variants, planned=max(v.planned_gib for v in variants),
                img_per_sec=float("nan"), ms_per_step=float("nan"), warmup_s=float("nan"),
                memory=float("nan"), memory_kind="not run")
  if _COMPILE_ONLY.value:
    return result
  executables = {tuple(v.flags.items()): v.compiled for v in variants}

  def run(state, step):
    flags_ = train.regularizer_schedule(step, config)
    if is_cond(config):  # The flags go to the one executable.
      return executables[()](state, setup.data, **flags_)
    return executables[tuple(flags_.items())](state, setup.data)

  state = setup.state
  warmup_start = time.perf_counter()
  for step in range(_WARMUP.value):
    state, metrics = run(state, step)
  jax.block_until_ready(metrics)
  warmup_s = time.perf_counter() - warmup_start
  start = time.perf_counter()
  for step in range(_WARMUP.value, _WARMUP.value + _STEPS.value):
    state, metrics = run(state, step)
  jax.block_until_ready(metrics)
  elapsed = time.perf_counter() - start
  memory, memory_kind = peak_memory_gib()
  return {**result, "img_per_sec": config.batch_size * _STEPS.value / elapsed,
          "ms_per_step": 1000 * elapsed / _STEPS.value, "warmup_s": warmup_s,
          "memory": memory, "memory_kind": memory_kind}


def main(argv):
  del argv
  device = jax.devices()[0]
  print(f"backend {device.platform} ({device.device_kind}), {jax.device_count()} device(s)")
  width = max(8, *(len(p) for p in _PRESETS.value))
  print(f"{'preset':>{width}} {'res':>5} {'batch':>5} {'img/s':>9} {'ms/step':>9} "
        f"{'warmup s':>9} {'XLA GiB':>8} {'peak GiB':>9}")
  planned = []
  for preset in _PRESETS.value:
    r = benchmark(preset)
    for v in r["variants"]:
      print(f"  {r['preset']} step variant {variant_name(v.flags):>5}: planned "
            f"{v.planned_gib:6.2f} GiB, compiled in {v.compile_s:6.1f} s", flush=True)
    print(f"{r['preset']:>{width}} {r['resolution']:>5} {r['batch']:>5} {r['img_per_sec']:>9.1f} "
          f"{r['ms_per_step']:>9.1f} {r['warmup_s']:>9.1f} {r['planned']:>8.2f} "
          f"{r['memory']:>9.2f} ({r['memory_kind']})",
          flush=True)
    planned.append(r["planned"])
  print(f"planned peak GiB: {max(planned):.2f}")


if __name__ == "__main__":
  app.run(main)
