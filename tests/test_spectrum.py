"""Mean magnitude spectra, their SSIM, and the Table-1 command on a tiny image folder."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from gantransfer_jax.analysis import spectrum

# Shares test_synth's compiled (resolution, batch) configurations.
RESOLUTION, BATCH = 16, 4


@pytest.fixture
def target_folder(tmp_path):
  """Six small photos-to-be: smooth gradients with a few edges, RGB and greyscale."""
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:24, :24]
  for i in range(6):
    image = (128 + 100 * np.sin(xx / (3 + i)) * np.cos(yy / (4 + i))).astype(np.uint8)
    image[rng.integers(0, 12):, rng.integers(0, 12):] //= 2
    if i % 2:
      image = np.stack([image, image[::-1], image.T], axis=-1)
    Image.fromarray(image).save(tmp_path / f"photo_{i}.{'png' if i % 2 else 'pgm'}")
  return tmp_path


def test_mean_log_spectrum_protocol():
  images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), np.uint8)
  grey = images.astype(np.float64) @ [0.299, 0.587, 0.114]
  expected = np.mean(np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(grey), axes=(-2, -1)))),
                     axis=0)
  np.testing.assert_allclose(spectrum.mean_log_spectrum(images, batch_size=2), expected)
  # Constant images: all energy at the centred zero frequency.
  flat = spectrum.mean_log_spectrum(np.full((2, 8, 8), 10, np.uint8))
  assert flat[4, 4] == pytest.approx(np.log1p(640)) and np.ptp(np.delete(flat.ravel(), 36)) == 0


def test_spectrum_ssim_uses_the_joint_data_range():
  a = np.random.default_rng(0).uniform(0, 10, (16, 16))
  assert spectrum.spectrum_ssim(a, a) == pytest.approx(1.0)
  # An offset lowers SSIM (no per-spectrum normalisation) and it is symmetric.
  shifted = spectrum.spectrum_ssim(a, a + 3)
  assert shifted < 0.99 and shifted == pytest.approx(spectrum.spectrum_ssim(a + 3, a))


def test_command_writes_png_json_and_prints_table_row(target_folder, tmp_path, capsys):
  out = tmp_path / "out"
  summary = spectrum.run(str(target_folder), str(out), resolution=RESOLUTION, num=6,
                         batch_size=BATCH)
  printed = capsys.readouterr().out
  assert "| target | PinkNoise | Primitives | Primitives-S | Primitives-PS |" in printed
  row = next(line for line in printed.splitlines() if "(6)" in line)
  values = [float(v) for v in row.strip(" |").split("|")[1:]]
  assert len(values) == 4 and all(-1 <= v <= 1 for v in values)
  with open(out / "spectrum.json") as f:
    saved = json.load(f)
  assert saved["ssim"] == summary["ssim"]
  assert list(saved["ssim"]) == ["pinknoise", "primitives", "primitives_s", "primitives_ps"]
  assert saved["num_target_images"] == 6 and saved["resolution"] == RESOLUTION
  with Image.open(out / "spectrum.png") as figure:
    assert figure.width > 4 * figure.height / 2


def test_command_line_entry_point(target_folder, tmp_path):
  out = tmp_path / "cli"
  result = subprocess.run(
      [sys.executable, "-m", "gantransfer_jax.analysis.spectrum", f"--target={target_folder}",
       f"--resolution={RESOLUTION}", "--num=4", f"--batch_size={BATCH}",
       "--synthesizers=pinknoise", f"--out={out}"],
      capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr
  assert "| target | PinkNoise |" in result.stdout
  assert (out / "spectrum.png").exists() and (out / "spectrum.json").exists()
  bad = subprocess.run(
      [sys.executable, "-m", "gantransfer_jax.analysis.spectrum", f"--target={tmp_path}/none",
       f"--out={out}"], capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert bad.returncode != 0 and "does not exist" in bad.stderr
