r"""Compares finetuning runs: FID and recall against images shown, and their samples.

  python -m gantransfer_jax.plot compare workdirs/ft_scratch workdirs/ft_transfergan \
      --out=compare.png            # also writes compare_samples.png

The papers judge a transfer method by how fast FID falls (the convergence point: the
kimg at which FID first comes within 5% of its best, `evaluation.convergence_from_history`)
and by whether recall holds up while it does (a method that memorises the few shots
converges fast but loses recall). Hence two panels over the same kimg axis, with each
run's convergence point marked on its FID curve, and the latest sample grids side by
side to see what the numbers mean.

Everything comes from the files a run writes (config.json, metrics.jsonl with
`--config.eval_every` records, samples/step_*.png): no checkpoint is loaded. From a
notebook:

  from gantransfer_jax import plot
  result = plot.plot_compare(["workdirs/a", "workdirs/b"], "compare.png")
  result.runs[0].convergence_kimg
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from gantransfer_jax import evaluation
from gantransfer_jax import writers
from gantransfer_jax.metrics import registry

CONFIG_FILE = "config.json"
_SAMPLE_FILE = re.compile(r"step_(\d+)\.png$")


class NoEvaluationsError(ValueError):
  """A workdir has no metrics.jsonl or no evaluation records in it."""


@dataclasses.dataclass(frozen=True)
class RunHistory:
  """What a run's workdir says about it: config, metric records and derived curves."""

  workdir: str
  config: dict[str, Any]
  records: list[dict[str, Any]]

  @property
  def name(self) -> str:
    return os.path.basename(os.path.normpath(self.workdir))

  @property
  def method(self) -> str:
    # Pretraining configs have no method; their task names them.
    return str(self.config.get("method") or self.config.get("task") or self.name)

  @property
  def init(self) -> str:
    checkpoint = self.config.get("init_checkpoint")
    return os.path.basename(os.path.normpath(checkpoint)) if checkpoint else "random"

  @property
  def label(self) -> str:
    return f"{self.method} ({self.init})"

  def curve(self, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(kimg, value) of the records holding both, in step order."""
    points = [(r["perf/kimg"], r[key]) for r in self.records
              if r.get(key) is not None and r.get("perf/kimg") is not None]
    kimg, values = zip(*points) if points else ((), ())
    return np.asarray(kimg, np.float64), np.asarray(values, np.float64)

  @property
  def evaluated(self) -> bool:
    return len(self.curve(registry.PRIMARY_KEY)[0]) > 0

  @property
  def convergence_kimg(self) -> float | None:
    return evaluation.convergence_from_history(self.records)

  @property
  def convergence_fid(self) -> float | None:
    """FID at the convergence point: where its marker sits on the FID curve."""
    kimg = self.convergence_kimg
    if kimg is None:
      return None
    kimgs, fids = self.curve(registry.PRIMARY_KEY)
    return float(fids[np.flatnonzero(kimgs == kimg)[0]])

  @property
  def latest_samples(self) -> str | None:
    """The samples/step_*.png grid of the highest step, if the run wrote any."""
    directory = os.path.join(self.workdir, "samples")
    steps = {}
    if os.path.isdir(directory):
      for file in os.listdir(directory):
        match = _SAMPLE_FILE.match(file)
        if match:
          steps[int(match.group(1))] = os.path.join(directory, file)
    return steps[max(steps)] if steps else None


def read_config(workdir: str) -> dict[str, Any]:
  """The run's config.json as written by the training loop; {} before it starts."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def load_run(workdir: str, *, require_evaluations: bool = True) -> RunHistory:
  """Reads a run's config.json (optional) and metrics.jsonl.

  Raises NoEvaluationsError (naming the workdir and the fix) when `require_evaluations`
  and there is no metrics.jsonl or no FID record in it: plotting or tabulating such a
  run would silently show nothing.
  """
  run = RunHistory(workdir, read_config(workdir), writers.read_metrics(workdir))
  if require_evaluations and not run.evaluated:
    if not os.path.exists(os.path.join(workdir, writers.METRICS_FILE)):
      problem = f"no {writers.METRICS_FILE} (is it a training workdir? has it started?)"
    else:
      problem = f"{writers.METRICS_FILE} holds no evaluation ({registry.PRIMARY_KEY}) records"
    raise NoEvaluationsError(
        f"{workdir}: {problem}. Train with --config.eval_every=N (e.g. a tenth of "
        "--config.total_steps) to record FID/KID/precision/recall every N steps; "
        "rerunning a run's command with it added resumes and evaluates from then on "
        "(a finished run: its final state, once).")
  return run


def unique_labels(runs: Sequence[RunHistory]) -> list[str]:
  """Method (init) per run; runs that would share a label also get their workdir name."""
  counts = collections.Counter(run.label for run in runs)
  labels = [f"{run.label} [{run.name}]" if counts[run.label] > 1 else run.label
            for run in runs]
  counts = collections.Counter(labels)  # Same workdir basename under different parents.
  return [f"{run.label} [{os.path.normpath(run.workdir)}]" if counts[label] > 1 else label
          for run, label in zip(runs, labels)]


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")  # Files only: works on headless machines.
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


# Line styles of the runs that share a method and init (seeds), in order.
_SEED_STYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))


def run_styles(runs: Sequence[RunHistory]) -> list[tuple[str, Any]]:
  """(colour, line style) per run: one colour per method and init, one line style per
  run within it, so that a study's seeds read as one method (a colour cycle over runs
  would repeat after ten and give two methods the same colour)."""
  plt = _pyplot()
  palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  colours, counts, styles = {}, collections.Counter(), []
  for run in runs:
    colour = colours.setdefault(run.label, palette[len(colours) % len(palette)])
    styles.append((colour, _SEED_STYLES[counts[run.label] % len(_SEED_STYLES)]))
    counts[run.label] += 1
  return styles


def compare_figure(runs: Sequence[RunHistory]):
  """FID and recall against kimg, one curve per run (a colour per method and init, a
  line style per seed), convergence points marked; the legend sits below the panels.

  Each convergence marker and line carries gid 'convergence:<label>' so tests and
  notebooks can find them among the figure's artists.
  """
  plt = _pyplot()
  # A third panel for ADA's augmentation probability when any run logged it.
  with_p = any(len(run.curve("augment/p")[0]) for run in runs)
  labels = unique_labels(runs)
  width = 18 if with_p else 12
  # As many legend columns as the longest label leaves room for (~0.075 in per
  # character at the small font, plus the line sample).
  columns = max(1, min(len(runs), int(width / (0.075 * max(map(len, labels), default=1)
                                               + 0.8))))
  legend_inches = 0.22 * -(-len(runs) // columns) + 0.2
  fig, axes = plt.subplots(1, 3 if with_p else 2, figsize=(width, 4.5 + legend_inches))
  ax_fid, ax_recall = axes[:2]
  for run, label, (color, style) in zip(runs, labels, run_styles(runs)):
    kimg, fid = run.curve(registry.PRIMARY_KEY)
    ax_fid.plot(kimg, fid, marker=".", color=color, linestyle=style, label=label)
    converged = run.convergence_kimg
    if converged is not None:
      ax_fid.axvline(converged, color=color, linestyle=":", linewidth=1,
                     gid=f"convergence:{label}")
      ax_fid.plot([converged], [run.convergence_fid], marker="*", markersize=13,
                  color=color, linestyle="none", gid=f"convergence:{label}")
    kimg, recall = run.curve("eval/recall")
    ax_recall.plot(kimg, recall, marker=".", color=color, linestyle=style, label=label)
    if with_p:
      kimg, p = run.curve("augment/p")
      axes[2].plot(kimg, p, color=color, linestyle=style, label=label)
  ax_fid.set(title="FID (star, dotted line: within 5% of the run's best)",
             xlabel="kimg (thousands of images shown)", ylabel="FID")
  ax_recall.set(title="Recall", xlabel="kimg (thousands of images shown)", ylabel="recall")
  if with_p:
    axes[2].set(title="ADA augmentation probability p",
                xlabel="kimg (thousands of images shown)", ylabel="p")
  for ax in axes:
    ax.grid(alpha=0.3)
  # Below the panels, not over the curves: a study has a dozen runs.
  fig.legend(*ax_fid.get_legend_handles_labels(), loc="lower center", ncol=columns,
             fontsize="small", frameon=False)
  fig.tight_layout(rect=(0, legend_inches / fig.get_figheight(), 1, 1))
  return fig


def samples_figure(runs: Sequence[RunHistory], max_columns: int = 4):
  """Each run's latest sample grid, titled with its label; None if no run has samples."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  if not any(run.latest_samples for run in runs):
    return None
  plt = _pyplot()
  columns = min(len(runs), max_columns)
  rows = -(-len(runs) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4.4 * rows), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, run, label in zip(axes.flat, runs, unique_labels(runs)):
    path = run.latest_samples
    if path is None:
      ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
    else:
      with Image.open(path) as image:
        ax.imshow(np.asarray(image.convert("RGB")), interpolation="nearest")
      label = f"{label}\n{os.path.basename(path)}"
    ax.set_title(label, fontsize="small")
  fig.tight_layout()
  return fig


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Files written by `plot_compare` and the runs behind them (convergence_kimg etc.)."""

  figure: str
  samples: str | None
  runs: list[RunHistory]


def default_samples_path(out: str) -> str:
  root, ext = os.path.splitext(out)
  return f"{root}_samples{ext or '.png'}"


def plot_compare(workdirs: Sequence[str], out: str, samples_out: str | None = None, *,
                 with_samples: bool = True) -> Comparison:
  """Writes the FID/recall comparison to `out` and the samples grid beside it."""
  if not workdirs:
    raise ValueError("no workdirs to compare")
  runs = [load_run(w) for w in workdirs]  # Fails before anything is written.
  plt = _pyplot()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig = compare_figure(runs)
  fig.savefig(out, dpi=120)
  plt.close(fig)
  samples_path = None
  fig = samples_figure(runs) if with_samples else None
  if fig is not None:
    samples_path = samples_out or default_samples_path(out)
    os.makedirs(os.path.dirname(os.path.abspath(samples_path)), exist_ok=True)
    fig.savefig(samples_path, dpi=120)
    plt.close(fig)
  return Comparison(out, samples_path, runs)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m gantransfer_jax.plot",
                                   description=__doc__.split("\n\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  compare = commands.add_parser(
      "compare", help="FID and recall vs kimg of several runs, plus their latest samples.")
  compare.add_argument("workdirs", nargs="+", help="Training workdirs.")
  compare.add_argument("--out", required=True, help="The figure file (e.g. compare.png).")
  compare.add_argument("--samples_out", default=None,
                       help="Samples grid file (default: OUT with a _samples suffix).")
  compare.add_argument("--no_samples", action="store_true", help="Skip the samples grid.")
  args = parser.parse_args(argv)
  try:
    result = plot_compare(args.workdirs, args.out, args.samples_out,
                          with_samples=not args.no_samples)
  except NoEvaluationsError as e:
    raise SystemExit(f"error: {e}") from None
  for run, label in zip(result.runs, unique_labels(result.runs)):
    kimg, fid = run.curve(registry.PRIMARY_KEY)
    print(f"{label}: {len(kimg)} evaluations up to {kimg[-1]:g} kimg, final FID "
          f"{fid[-1]:.2f}, best {np.min(fid):.2f}, within 5% of best at "
          f"{run.convergence_kimg:g} kimg")
  print(f"wrote {result.figure}")
  if result.samples:
    print(f"wrote {result.samples}")
  elif not args.no_samples:
    print("no samples/step_*.png in any run: no samples grid")


if __name__ == "__main__":
  main()
