r"""Filter diversity of a checkpoint (paper 001, Table 4 and supplement §6; NOTES §1).

For each conv layer: flatten every output filter over (kh, kw, in) -- Flax kernels are
HWIO, so filter o is `kernel[..., o]` -- and average the cosine similarity over all
distinct pairs of filters (i < j; the ordered "permutations" of the paper give the same
mean). Lower means more diverse filters; the paper reads that as a less domain-biased,
more transferable model (Primitives-PS 0.0082 (D) / 0.0083 (G) vs FFHQ 0.0135 / 0.0143).

Choices, and the evidence for them:
  * No absolute value. The paper averages the cosine similarity itself. Its numbers are
    below what |cos| of random filters would give (E|cos| ~ sqrt(2 / (pi d)), 0.012 for
    3x3x512 filters, 0.024 for 3x3x128; the paper reports 0.003 for some G layers),
    which signed cosines of nearly orthogonal filters explain and absolute ones do not.
  * 3x3 (in general non-1x1) convolutions only. The paper's tables list conv0..conv12
    for each of StyleGAN2-256's networks, 26 layers: exactly the 13 3x3 convolutions of G
    and of D once the 1x1 toRGB/fromRGB and skip convolutions are left out. Pass
    `include_1x1=True` to keep them.
  * Any 4-D array leaf whose path ends in 'kernel' is a conv kernel (HWIO), which covers
    `nn.Conv`, `nn.ConvTranspose` and wrapped (e.g. spectral-normalised) convs; other
    leaves (dense kernels, biases, AdaFM gamma/beta, BN statistics) are ignored.

CLI: `python -m gantransfer_jax.analysis.filter_diversity CHECKPOINT_OR_WORKDIR...`
prints a per-layer table (one column per checkpoint) and the per-network means.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import jax
import numpy as np

NETWORKS = ("generator", "generator_ema", "discriminator")


def _key_name(key: Any) -> str:
  for attribute in ("key", "name", "idx"):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def _path_to_str(path: Sequence[Any]) -> str:
  return "/".join(_key_name(key) for key in path)


def mean_pairwise_cosine(filters: np.ndarray) -> float:
  """Mean cosine similarity over distinct pairs of the rows of `filters` [num, dim].

  Zero rows have no direction and are left out; fewer than two rows gives NaN.
  """
  filters = np.asarray(filters, np.float64)
  norms = np.linalg.norm(filters, axis=1)
  filters = filters[norms > 0] / norms[norms > 0, None]
  num = filters.shape[0]
  if num < 2:
    return float("nan")
  # sum_{i != j} cos_ij = |sum_i u_i|^2 - sum_i |u_i|^2, with |u_i| = 1: O(num * dim).
  total = np.sum(np.square(filters.sum(axis=0))) - num
  return float(total / (num * (num - 1)))


def conv_filters(kernel: np.ndarray) -> np.ndarray:
  """[out, kh * kw * in] filters of an HWIO conv kernel."""
  kernel = np.asarray(kernel)
  return np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1)


def is_conv_kernel(path: str, leaf: Any, include_1x1: bool = False) -> bool:
  shape = np.shape(leaf)
  if len(shape) != 4 or not path.split("/")[-1].startswith("kernel"):
    return False
  return include_1x1 or tuple(shape[:2]) != (1, 1)


def filter_similarity(params: Any, include_1x1: bool = False) -> dict[str, float]:
  """{layer path: mean pairwise cosine similarity of its filters} for a Flax params tree.

  Paths join the tree's keys with '/', e.g. 'b64/conv0/kernel'; layers keep the tree's
  order. See the module docstring for what counts as a conv layer and why.
  """
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return {
      _path_to_str(path): mean_pairwise_cosine(conv_filters(leaf))
      for path, leaf in leaves
      if is_conv_kernel(_path_to_str(path), leaf, include_1x1)
  }


def summarize(similarities: Mapping[str, float]) -> dict[str, float]:
  """Mean (the paper's Table 4 number), min, max and count over a network's layers."""
  values = np.asarray([v for v in similarities.values() if np.isfinite(v)], np.float64)
  if values.size == 0:
    return {"mean": float("nan"), "min": float("nan"), "max": float("nan"), "num_layers": 0}
  return {"mean": float(values.mean()), "min": float(values.min()),
          "max": float(values.max()), "num_layers": int(values.size)}


def format_table(per_checkpoint: Mapping[str, Mapping[str, float]]) -> str:
  """A text table: one row per layer, one column per checkpoint, and a 'mean' row."""
  names = list(per_checkpoint)
  layers: list[str] = []
  for similarities in per_checkpoint.values():
    layers += [layer for layer in similarities if layer not in layers]
  width = max([len("layer")] + [len(layer) for layer in layers])
  column = max([10] + [len(name) for name in names])
  lines = ["  ".join(["layer".ljust(width)] + [name.rjust(column) for name in names])]

  def cell(value: float | None) -> str:
    return ("-" if value is None or not np.isfinite(value) else f"{value:.5f}").rjust(column)

  for layer in layers:
    lines.append("  ".join([layer.ljust(width)] +
                           [cell(per_checkpoint[name].get(layer)) for name in names]))
  lines.append("  ".join(["mean".ljust(width)] +
                         [cell(summarize(per_checkpoint[name])["mean"]) for name in names]))
  return "\n".join(lines)


# -------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str]) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  # Imported here: only the CLI needs Orbax and the checkpoint layout.
  from gantransfer_jax.checkpoints import restore_params  # pylint: disable=g-import-not-at-top

  paths = list(argv[1:])
  if not paths:
    raise SystemExit("usage: python -m gantransfer_jax.analysis.filter_diversity "
                     "CHECKPOINT_OR_WORKDIR... [--networks=generator,discriminator]")
  networks = [n for n in flags.FLAGS.networks.split(",") if n]
  report: dict[str, dict[str, Any]] = {network: {} for network in networks}
  for path in paths:
    _, params = restore_params(path)
    for network in networks:
      if network not in params:
        raise SystemExit(f"{path} has no {network!r} parameters; it has {sorted(params)}")
      report[network][path] = filter_similarity(params[network], flags.FLAGS.include_1x1)
  for network in networks:
    print(f"\n== {network}: mean pairwise cosine similarity of filters (lower = more diverse)")
    print(format_table(report[network]))
  if flags.FLAGS.output_json:
    summary = {network: {path: {"layers": layers, **summarize(layers)}
                         for path, layers in report[network].items()}
               for network in networks}
    with open(flags.FLAGS.output_json, "w") as f:
      json.dump(summary, f, indent=2)
    print(f"\nwrote {flags.FLAGS.output_json}")


def _define_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("networks", "generator,discriminator",
                      f"Comma-separated networks to analyse, from {', '.join(NETWORKS)}.")
  flags.DEFINE_bool("include_1x1", False, "Also analyse 1x1 convolutions (toRGB, skips).")
  flags.DEFINE_string("output_json", "", "Optional path for the numbers as JSON.")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
