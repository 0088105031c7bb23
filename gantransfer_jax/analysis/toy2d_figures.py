"""Figures of the 2D study (paper 004, Fig. 2 and 3), from numpy arrays; matplotlib on use."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from gantransfer_jax.analysis import toy2d_metrics as metrics


def _plot_points(ax, points: np.ndarray, color: str, label: str | None = None,
                 alpha: float = 0.25) -> None:
  ax.scatter(points[:, 0], points[:, 1], s=3, alpha=alpha, color=color, label=label,
             rasterized=True)


def save_figure2(path: str, panels: Sequence[tuple[str, dict[str, np.ndarray]]],
                 limit: float) -> None:
  """Paper Fig. 2: one scatter panel per (title, {label: points}), target in grey."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  colors = {"target": "tab:gray", "Source-I": "tab:blue", "Source-II": "tab:green",
            "generated": "tab:red"}
  fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.6))
  for ax, (title, sets) in zip(axes, panels):
    for label, points in sets.items():
      _plot_points(ax, points, colors.get(label, "tab:orange"), label)
    ax.set_title(title, fontsize=9)
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)
  axes[0].legend(loc="upper right", fontsize=7, markerscale=3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def save_figure3(path: str, recall: np.ndarray, gradsim: np.ndarray, w1: np.ndarray,
                 gradsim_label: str, w1_label: str = "finetuned $W_1$") -> None:
  """Paper Fig. 3: recall vs gradient similarity, each vs finetuned W1, coloured by W1."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 4, figsize=(15, 3.6),
                           gridspec_kw={"width_ratios": [20, 20, 20, 1]})
  norm = matplotlib.colors.Normalize(vmin=float(np.min(w1)), vmax=float(np.max(w1)))
  cmap = matplotlib.colormaps["jet_r"]
  style = dict(c=w1, cmap=cmap, norm=norm, s=27)
  axes[0].scatter(gradsim, recall, **style)
  axes[0].set(xlabel=gradsim_label, ylabel="recall of the starting G")
  axes[1].scatter(gradsim, w1, **style)
  axes[1].set(xlabel=gradsim_label, ylabel=w1_label,
              title=f"Pearson {metrics.pearson(gradsim, w1):+.2f}")
  axes[2].scatter(recall, w1, **style)
  axes[2].set(xlabel="recall of the starting G", ylabel=w1_label,
              title=f"Pearson {metrics.pearson(recall, w1):+.2f}")
  for ax in axes[:3]:
    ax.grid(alpha=0.3)
  fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), cax=axes[3],
               label=w1_label)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
