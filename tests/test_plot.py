"""The run comparison figure, from hand-written workdirs (no training)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from gantransfer_jax import plot

# FID 30 at 3 kimg is within 5% of the best (29.5 at 5 kimg): the convergence point.
FIDS = (100.0, 50.0, 30.0, 31.0, 29.5)


def write_run(workdir, *, method="transfergan", init="/ckpts/ps_quick", fids=FIDS,
              sample_steps=(100, 200)):
  os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
  config = {"task": "finetune", "method": method, "init_checkpoint": init, "seed": 0,
            "total_steps": 500, "batch_size": 10,
            "data": {"source": "orl_faces", "num_images": 10}}
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config, f)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for i, fid in enumerate(fids, 1):
      step = 100 * i
      # A training log line at the same step, and one between evaluations.
      f.write(json.dumps({"step": step - 50, "perf/kimg": (step - 50) / 100,
                          "g_loss": 1.0}) + "\n")
      f.write(json.dumps({"step": step, "perf/kimg": step / 100, "d_loss": 0.5}) + "\n")
      f.write(json.dumps({"step": step, "eval/fid": fid, "eval/kid": fid / 1000,
                          "eval/precision": 0.5, "eval/recall": 0.1 * i,
                          "perf/kimg": step / 100}) + "\n")
    if fids:  # The training loop's end-of-run summary.
      f.write(json.dumps({"step": 100 * len(fids), "eval/best_fid": min(fids),
                          "eval/convergence_kimg": 3.0}) + "\n")
  for step in sample_steps:
    # The latest grid is the one with the most red: the test can tell which was used.
    image = np.zeros((16, 16, 3), np.uint8)
    image[..., 0] = step % 256
    Image.fromarray(image).save(os.path.join(workdir, "samples", f"step_{step:07d}.png"))
  return str(workdir)


def test_compare_writes_figures_and_marks_convergence(tmp_path):
  a = write_run(tmp_path / "a")
  b = write_run(tmp_path / "b", fids=(80.0, 60.0, 40.0, 20.0, 21.0), sample_steps=(100,))
  out = str(tmp_path / "figs" / "compare.png")

  result = plot.plot_compare([a, b], out)

  assert result.figure == out
  assert result.samples == str(tmp_path / "figs" / "compare_samples.png")
  for path in (result.figure, result.samples):
    with Image.open(path) as image:
      image.load()
      assert image.size[0] > 100 and image.size[1] > 100
  assert [run.convergence_kimg for run in result.runs] == [3.0, 4.0]
  assert [run.convergence_fid for run in result.runs] == [30.0, 20.0]
  # Same method and init: the workdir names tell the curves apart.
  assert plot.unique_labels(result.runs) == ["transfergan (ps_quick) [a]",
                                             "transfergan (ps_quick) [b]"]
  assert result.runs[0].latest_samples.endswith("step_0000200.png")


def test_convergence_marker_sits_on_the_fid_curve(tmp_path):
  runs = [plot.load_run(write_run(tmp_path / "s", method="scratch", init=None))]
  fig = plot.compare_figure(runs)
  try:
    ax_fid, ax_recall = fig.axes
    marks = [line for line in ax_fid.get_lines()
             if line.get_gid() == "convergence:scratch (random)"]
    vertical, star = marks
    np.testing.assert_array_equal(vertical.get_xdata(), [3.0, 3.0])
    np.testing.assert_array_equal(star.get_xdata(), [3.0])
    np.testing.assert_array_equal(star.get_ydata(), [30.0])
    # The FID curve holds the evaluations only, not the training log lines.
    np.testing.assert_array_equal(ax_fid.get_lines()[0].get_xdata(), [1, 2, 3, 4, 5])
    np.testing.assert_allclose(ax_recall.get_lines()[0].get_ydata(), [0.1, 0.2, 0.3, 0.4, 0.5])
  finally:
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    plt.close(fig)


def test_seeds_of_one_method_share_a_colour_and_methods_do_not(tmp_path):
  """Twelve runs (four methods x three seeds): more than the ten-colour cycle holds."""
  methods = ("scratch", "transfergan", "freezed", "dip_freezed")
  runs = [plot.load_run(write_run(tmp_path / f"{method}_s{seed}", method=method))
          for method in methods for seed in range(3)]
  fig = plot.compare_figure(runs)
  try:
    ax_fid = fig.axes[0]
    curves = [line for line in ax_fid.get_lines() if not (line.get_gid() or "")]
    assert len(curves) == 12
    colours = [curve.get_color() for curve in curves]
    styles = [curve.get_linestyle() for curve in curves]
    for i in range(0, 12, 3):
      assert len(set(colours[i:i + 3])) == 1 and len(set(styles[i:i + 3])) == 3
    assert len({colours[i] for i in range(0, 12, 3)}) == 4
    # The legend is the figure's, below the panels, and names every run.
    (legend,) = fig.legends
    assert len(legend.get_texts()) == 12 and ax_fid.get_legend() is None
  finally:
    plot._pyplot().close(fig)


def test_labels_only_grow_on_collisions(tmp_path):
  runs = [plot.load_run(write_run(tmp_path / "x", method="scratch", init=None)),
          plot.load_run(write_run(tmp_path / "y", method="freezed"))]
  assert plot.unique_labels(runs) == ["scratch (random)", "freezed (ps_quick)"]


def test_runs_without_evaluations_fail_naming_the_workdir(tmp_path):
  empty = tmp_path / "not_started"
  empty.mkdir()
  with pytest.raises(plot.NoEvaluationsError,
                     match=r"not_started: no metrics.jsonl.*eval_every"):
    plot.load_run(str(empty))
  no_evals = write_run(tmp_path / "no_evals", fids=())
  with pytest.raises(plot.NoEvaluationsError, match=r"no_evals: .*no evaluation.*eval_every"):
    plot.plot_compare([no_evals], str(tmp_path / "never.png"))
  assert not os.path.exists(tmp_path / "never.png")
  with pytest.raises(SystemExit, match=r"no_evals: .*--config.eval_every"):
    plot.main(["compare", no_evals, f"--out={tmp_path / 'never.png'}"])


def test_cli(tmp_path, capsys):
  a = write_run(tmp_path / "a", method="scratch", init=None, sample_steps=())
  b = write_run(tmp_path / "b")
  out = tmp_path / "cmp.png"
  plot.main(["compare", a, b, f"--out={out}", f"--samples_out={tmp_path / 'grid.png'}"])
  printed = capsys.readouterr().out
  assert "scratch (random): 5 evaluations up to 5 kimg" in printed
  assert "within 5% of best at 3 kimg" in printed
  assert out.exists() and (tmp_path / "grid.png").exists()
