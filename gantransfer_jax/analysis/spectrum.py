r"""Average magnitude spectra of image sets and their SSIM (paper 001, Table 1, supplement 10).

  python -m gantransfer_jax.analysis.spectrum --target=DIR --resolution=64 --num=1000 --out=OUT

The paper compares each synthesizer's average magnitude spectrum with a target
set's by SSIM without defining the protocol fully. NOTES section 1 fixes the one
under which the paper's ordering reproduces, used here exactly:
  - a set's spectrum is the mean over its images of log(1 + |fftshift(fft2(grey))|),
    grey = BT.601 luma of the uint8 image, in [0, 255];
  - SSIM is scikit-image's structural_similarity (7 x 7 window) with the joint
    data range of the two spectra, and no per-spectrum normalisation.
The command prints a Table-1-style row (SSIM of every synthesizer against the
target), writes the mean log-spectra side by side to OUT/spectrum.png and the
numbers to OUT/spectrum.json.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import jax
import numpy as np

from gantransfer_jax import images as images_lib
from gantransfer_jax import synth
from gantransfer_jax.data import load_image_folder

# BT.601 luma, as Pillow's "L" mode and cv2.COLOR_RGB2GRAY.
_LUMA = np.array([0.299, 0.587, 0.114])


def greyscale(images: np.ndarray) -> np.ndarray:
  """uint8 [N, H, W, 3] (or greyscale [N, H, W]) -> float64 [N, H, W] in [0, 255]."""
  images = np.asarray(images)
  if images.ndim == 4:
    return images.astype(np.float64) @ _LUMA
  if images.ndim == 3:
    return images.astype(np.float64)
  raise ValueError(f"expected [N, H, W, 3] or [N, H, W] images, got shape {images.shape}")


class SpectrumMean:
  """Streaming mean of log(1 + |fftshift(fft2(grey))|) over batches of images."""

  def __init__(self):
    self.total = None
    self.count = 0

  def add(self, images: np.ndarray) -> None:
    grey = greyscale(images)
    logs = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(grey), axes=(-2, -1))))
    self.total = logs.sum(axis=0) if self.total is None else self.total + logs.sum(axis=0)
    self.count += len(grey)

  @property
  def mean(self) -> np.ndarray:
    if not self.count:
      raise ValueError("no images were added")
    return self.total / self.count


def mean_log_spectrum(images: np.ndarray, batch_size: int = 256) -> np.ndarray:
  """Mean log-magnitude spectrum of uint8 images [N, H, W(, 3)], float64 [H, W]."""
  mean = SpectrumMean()
  for start in range(0, len(images), batch_size):
    mean.add(images[start:start + batch_size])
  return mean.mean


def spectrum_ssim(spectrum: np.ndarray, other: np.ndarray) -> float:
  """SSIM of two mean spectra with their joint data range (no normalisation)."""
  from skimage.metrics import structural_similarity  # pylint: disable=g-import-not-at-top

  data_range = max(spectrum.max(), other.max()) - min(spectrum.min(), other.min())
  return float(structural_similarity(spectrum, other, data_range=data_range))


def synthetic_spectrum(name: str, resolution: int, num: int, seed: int = 0,
                       batch_size: int = 100, **options) -> np.ndarray:
  """Mean spectrum of `num` images of synthesizer `name` (batches from fold_in(key, i))."""
  synthesize = synth.make_synthesizer(name, resolution, **options)
  key = jax.random.key(seed)
  mean = SpectrumMean()
  batch_size = min(batch_size, num)
  for index, start in enumerate(range(0, num, batch_size)):
    batch = synthesize(jax.random.fold_in(key, index), batch_size)
    mean.add(images_lib.to_uint8(batch)[:num - start])
  return mean.mean


def format_row(target: str, ssims: dict[str, float]) -> str:
  """The Table-1-style header and row: SSIM of each synthesizer vs the target."""
  names = [synth.DISPLAY_NAMES.get(name, name) for name in ssims]
  header = "| target | " + " | ".join(names) + " |"
  rule = "|" + "---|" * (len(names) + 1)
  row = f"| {target} | " + " | ".join(f"{value:.4f}" for value in ssims.values()) + " |"
  return "\n".join([header, rule, row])


def save_spectra_figure(path: str, spectra: dict[str, np.ndarray],
                        ssims: dict[str, float]) -> None:
  """The mean log-spectra side by side on one colour scale, SSIM in the titles."""
  # A bare Figure renders with Agg and leaves pyplot's global backend alone.
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  vmin = min(s.min() for s in spectra.values())
  vmax = max(s.max() for s in spectra.values())
  fig = Figure(figsize=(2.6 * len(spectra), 3.0))
  axes = fig.subplots(1, len(spectra), squeeze=False)
  for ax, (title, spectrum) in zip(axes[0], spectra.items()):
    shown = ax.imshow(spectrum, cmap="magma", vmin=vmin, vmax=vmax)
    if title in ssims:
      title = f"{title}\nSSIM {ssims[title]:.4f}"
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.colorbar(shown, ax=axes[0].tolist(), shrink=0.8, label="mean log(1 + |F|)")
  fig.savefig(path, dpi=110, bbox_inches="tight")


def run(target: str, out: str, *, resolution: int = 64, num: int = 1000, seed: int = 0,
        batch_size: int = 100, names: Iterable[str] | None = None, **options) -> dict:
  """The command: compares every synthesizer's spectrum with a folder's; returns the summary.

  Prints the Table-1 row; writes OUT/spectrum.png and OUT/spectrum.json.
  `options` go to make_synthesizer (n_shapes, size_policy, ...).
  """
  names = list(synth.SYNTHESIZERS if names is None else names)
  unknown = [name for name in names if name not in synth.SYNTHESIZERS]
  if unknown or not names:
    raise ValueError(f"unknown synthesizer(s) {unknown}; valid: {', '.join(synth.SYNTHESIZERS)}")
  for name in names:  # Bad options fail before any work.
    synth.make_config(name, resolution, **options)
  target_images = load_image_folder(target, resolution)
  target_spectrum = mean_log_spectrum(target_images)
  spectra = {"target": target_spectrum}
  ssims = {}
  for name in names:
    spectrum = synthetic_spectrum(name, resolution, num, seed=seed, batch_size=batch_size,
                                  **options)
    spectra[synth.DISPLAY_NAMES[name]] = spectrum
    ssims[name] = spectrum_ssim(spectrum, target_spectrum)

  target_label = f"{os.path.basename(os.path.normpath(target))} ({len(target_images)})"
  print(format_row(target_label, ssims))
  os.makedirs(out, exist_ok=True)
  save_spectra_figure(os.path.join(out, "spectrum.png"), spectra,
                      {synth.DISPLAY_NAMES[n]: v for n, v in ssims.items()})
  summary = {
      "target": os.path.abspath(target),
      "num_target_images": len(target_images),
      "resolution": resolution,
      "num_synthetic": num,
      "seed": seed,
      "synth_options": options,
      "ssim": ssims,
      "protocol": "mean over images of log(1 + |fftshift(fft2(BT.601 grey in [0, 255]))|); "
                  "skimage structural_similarity, joint data range, no normalisation",
  }
  with open(os.path.join(out, "spectrum.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def main(argv: Sequence[str]) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top

  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {' '.join(argv[1:])}")
  values = flags.FLAGS
  if not values.target or not values.out:
    raise SystemExit("--target and --out are required")
  names = [n for n in values.synthesizers.split(",") if n]
  try:
    run(values.target, values.out, resolution=values.resolution, num=values.num,
        seed=values.seed, batch_size=values.batch_size, names=names,
        n_shapes=values.n_shapes, size_policy=values.size_policy)
  except (ValueError, FileNotFoundError) as error:
    raise SystemExit(f"error: {error}") from error


def _define_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("target", None, "Folder of target images (jpg, png, pgm, bmp, ...).")
  flags.DEFINE_string("out", None, "Output folder for spectrum.png and spectrum.json.")
  flags.DEFINE_integer("resolution", 64, "Square resolution of every image.")
  flags.DEFINE_integer("num", 1000, "Synthetic images per synthesizer.")
  flags.DEFINE_integer("seed", 0, "PRNG seed of the synthetic images.")
  flags.DEFINE_integer("batch_size", 100, "Synthetic images per jitted call.")
  flags.DEFINE_string("synthesizers", ",".join(synth.SYNTHESIZERS),
                      f"Comma-separated subset of {', '.join(synth.SYNTHESIZERS)}.")
  flags.DEFINE_integer("n_shapes", 100, "Shapes per image.")
  flags.DEFINE_enum("size_policy", "decay", list(synth.SIZE_POLICIES), "Shape size policy.")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
