r"""The learned AdaFM modulation of a finetuned checkpoint (paper 002, Fig. 11(a)(b); NOTES §3).

  python -m gantransfer_jax.analysis.modulation --checkpoint=WORKDIR_OR_STEP_DIR \
      --out=modulation.png [--ema]

The paper reads its Fig. 11 as: every transferred filter is still used on the target
(no gamma near 0) but modulated (gamma around 1, beta around 0, with a spread), which is
why AdaFM beats freezing the general part as it is. The figure here is the same: one box
per group of G's general part (`resnet_k`; every modulated kernel's entries of the group
pooled, conv_0 and conv_1 of both blocks), gamma and beta in two panels, the identity
(gamma = 1, beta = 0, where `adafm.init` starts) as a reference line. Boxes span the
quartiles, whiskers 1.5 IQR, dots beyond are the outliers. Filter Selection runs
(adafm.kind 'fs') plot their [C_out] vectors the same way.

The command reads a checkpoint of an AdaFM finetune (model 'adafm', adafm.kind 'adafm' or
'fs'): the trained G's modulation, or with --ema G_ema's. It prints the per-group numbers
beside the figure. From a notebook:

  from gantransfer_jax.analysis import modulation
  mod, config, step = modulation.load_modulation("workdirs/ft_adafm")
  stats = modulation.modulation_statistics(mod)   # {'resnet_2': {'gamma': ..., 'beta': ...}}
  modulation.plot_modulation(mod, "fig11.png", title="flowers")
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from flax import traverse_util

FACTORS = ("gamma", "beta")
# Where `adafm.init` starts: W' = 1 * W + 0 = W.
IDENTITY = {"gamma": 1.0, "beta": 0.0}
MODULATION = "modulation"  # = transfer.modulation.KEY; not imported to keep the CLI light.

Statistics = dict[str, dict[str, np.ndarray]]


class NoModulationError(ValueError):
  """The checkpoint holds no AdaFM modulation (another model, or adafm.kind 'none')."""


def _natural_key(name: str) -> tuple[Any, ...]:
  """'resnet_10' after 'resnet_2': digit runs compare as numbers."""
  return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def modulation_statistics(modulation: Mapping[str, Any]) -> Statistics:
  """{group: {'gamma': values, 'beta': values}}: each group's factors pooled, 1-D.

  A group is a top-level entry of the modulation (a `resnet_k` of G's general part).
  Within a group the kernels' factors are concatenated in sorted path order
  ('0/conv_0', '0/conv_1', '1/conv_0', ...), so the result does not depend on how the
  checkpoint ordered its keys. Groups come in natural order (resnet_2 ... resnet_5).

  Raises:
    ValueError: no gamma/beta entries at all.
  """
  pooled: dict[str, dict[str, list[tuple[tuple[str, ...], np.ndarray]]]] = {}
  for path, value in traverse_util.flatten_dict(dict(modulation)).items():
    if path[-1] in FACTORS:
      group = pooled.setdefault(str(path[0]), {factor: [] for factor in FACTORS})
      group[path[-1]].append((tuple(map(str, path)), np.asarray(value)))
  if not pooled:
    raise ValueError("the modulation holds no gamma/beta entries")
  statistics = {}
  for group in sorted(pooled, key=_natural_key):
    statistics[group] = {
        factor: np.concatenate([value.ravel() for _, value in sorted(
            pooled[group][factor], key=lambda item: [_natural_key(p) for p in item[0]])])
        if pooled[group][factor] else np.zeros((0,), np.float32)
        for factor in FACTORS}
  return statistics


def format_summary(statistics: Statistics) -> str:
  """A table of each group's count, median, quartiles and range of gamma and beta."""
  header = "| group | factor | n | min | q1 | median | q3 | max |"
  lines = [header, "|" + "---|" * 8]
  for group, factors in statistics.items():
    for factor, values in factors.items():
      if not values.size:
        continue
      q = np.percentile(values, [0, 25, 50, 75, 100])
      lines.append(f"| {group} | {factor} | {values.size} | "
                   + " | ".join(f"{v:.4f}" for v in q) + " |")
  return "\n".join(lines)


def plot_modulation(modulation: Mapping[str, Any], out: str, *, title: str = "") -> Statistics:
  """Fig. 11(a)(b): box plots of gamma and beta per group, written as a PNG to `out`.

  Returns the `modulation_statistics` it plotted.
  """
  # Agg on a bare Figure: a file only, and pyplot's global backend is left alone.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  statistics = modulation_statistics(modulation)
  groups = list(statistics)
  fig = Figure(figsize=(max(7.0, 1.5 * len(groups) * 2), 3.8))
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, 2)
  for ax, factor, name in zip(axes, FACTORS, ("scale", "shift")):
    ax.boxplot([statistics[group][factor] for group in groups], widths=0.6,
               flierprops=dict(marker=".", markersize=2, alpha=0.3))
    ax.set_xticks(range(1, len(groups) + 1), groups)
    ax.axhline(IDENTITY[factor], color="tab:red", linestyle="--", linewidth=1,
               label=f"identity ({factor} = {IDENTITY[factor]:g})")
    ax.set_title(f"{factor} ({name})")
    ax.set_xlabel("group of G's general part")
    ax.legend(loc="best", fontsize=8)
  if title:
    fig.suptitle(title)
  directory = os.path.dirname(os.path.abspath(out))
  os.makedirs(directory, exist_ok=True)
  fig.savefig(out, dpi=120, bbox_inches="tight")
  return statistics


def load_modulation(path: str, *, ema: bool = False) -> tuple[dict[str, Any],
                                                              ml_collections.ConfigDict, int]:
  """(modulation, config, step) of a checkpoint (workdir, checkpoints/ or step folder).

  Args:
    path: the checkpoint.
    ema: G_ema's modulation instead of the trained G's.

  Raises:
    NoModulationError: not an AdaFM/FS run (naming the model and adafm.kind).
    FileNotFoundError: no checkpoint at `path`.
  """
  # Imported here: only loading needs Orbax and the checkpoint layout.
  from gantransfer_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from gantransfer_jax.models import families  # pylint: disable=g-import-not-at-top

  config = checkpoints.restore_raw_config(path)
  model = config.get("model")
  kind = (config.get("adafm") or {}).get("kind")
  family = families.lookup(model)
  if family is None or not family.has_modulation(config):
    raise NoModulationError(
        f"{path} holds no AdaFM modulation: it is a model {model!r} run with adafm.kind "
        f"{kind!r} (SmallHead and GPHead runs, kind 'none' or model 'resnet', have none; "
        "finetune with configs/finetune.py:adafm or :fs)")
  _, state, step = checkpoints.restore_raw(path)
  network = "g_ema_params" if ema else "g_params"
  params = state.get(network) or {}
  if MODULATION not in params:
    raise NoModulationError(f"{path}: model {model!r} with adafm.kind {kind!r}, but "
                            f"{network} has no {MODULATION!r} entry (found {sorted(params)})")
  return params[MODULATION], config, step


def run(checkpoint: str, out: str, *, ema: bool = False) -> Statistics:
  """The command: plots a checkpoint's modulation to `out`, prints the numbers."""
  from gantransfer_jax import checkpoints  # pylint: disable=g-import-not-at-top

  modulation, config, step = load_modulation(checkpoint, ema=ema)
  directory, _ = checkpoints.resolve_checkpoint(checkpoint)
  if os.path.basename(directory) == checkpoints.CHECKPOINT_DIR:
    directory = os.path.dirname(directory)
  name = os.path.basename(directory)  # The run, whichever folder of it was given.
  title = (f"{name}: AdaFM modulation (kind {config.adafm.kind!r}) of "
           f"{'G_ema' if ema else 'G'}, step {step}")
  statistics = plot_modulation(modulation, out, title=title)
  print(title)
  print(format_summary(statistics))
  print(f"wrote {os.path.abspath(out)}")
  return statistics


def main(argv: Sequence[str]) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top

  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {' '.join(argv[1:])}")
  values = flags.FLAGS
  if not values.checkpoint or not values.out:
    raise SystemExit("--checkpoint and --out are required")
  try:
    run(values.checkpoint, values.out, ema=values.ema)
  except (NoModulationError, FileNotFoundError) as error:
    raise SystemExit(f"error: {error}") from error


def _define_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("checkpoint", None,
                      "A finetuned AdaFM/FS run: its workdir, checkpoints/ or a step folder.")
  flags.DEFINE_string("out", None, "The PNG to write.")
  flags.DEFINE_bool("ema", False, "Plot G_ema's modulation instead of the trained G's.")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
