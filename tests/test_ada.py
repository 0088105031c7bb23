"""ADA (gantransfer_jax.ada): each op alone against its closed form, the resampling
against the official PyTorch ops, gradients, the adaptive p controller, config forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gantransfer_jax import builder
from gantransfer_jax import ada
from gantransfer_jax import augment
from gantransfer_jax import losses

B, S = 8, 16


def _images(batch=B, size=S, channels=3, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, channels)).astype(
      np.float32)


def _smooth_images(batch=4, size=32, seed=0):
  """Low-frequency images: what any resampler reproduces closely."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / size
  out = np.zeros((batch, size, size, 3), np.float32)
  for b in range(batch):
    for c in range(3):
      fx, fy, phase = rng.uniform(0.5, 1.5), rng.uniform(0.5, 1.5), rng.uniform(0, 6)
      out[b, :, :, c] = 0.8 * np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
  return out


def _alone(op, images, seed=1):
  """Draws op alone at p = 1 and applies it: (output, params)."""
  params = ada.draw(jax.random.key(seed), images.shape, 1.0, {op: 1})
  return np.asarray(ada.apply(jnp.asarray(images), params)), jax.device_get(params)


def test_xflip_alone_is_an_exact_mirror_for_about_half_the_samples():
  x = _images(batch=32)
  out, params = _alone("xflip", x)
  flipped = params.xflip.astype(bool)
  np.testing.assert_array_equal(out[flipped], x[flipped][:, :, ::-1])
  np.testing.assert_array_equal(out[~flipped], x[~flipped])
  assert 0 < flipped.sum() < 32


def test_rotate90_alone_is_an_exact_quarter_turn():
  x = _images(batch=32)
  out, params = _alone("rotate90", x)
  turns = params.rotate90.astype(int)
  assert set(turns.tolist()) == {0, 1, 2, 3}
  for b in range(32):
    np.testing.assert_array_equal(out[b], np.rot90(x[b], turns[b]))


def test_xint_alone_is_an_integer_shift_with_reflection_through_the_resampling():
  x = _images(batch=32)
  out, params = _alone("xint", x)
  shifts = params.xint.astype(int)  # (x, y) pixels
  np.testing.assert_array_equal(shifts, params.xint)
  assert np.abs(shifts).max() <= round(S * ada.XINT_MAX) and np.abs(shifts).max() > 0
  for b, (tx, ty) in enumerate(shifts):
    padded = np.pad(x[b], ((S, S), (S, S), (0, 0)), mode="reflect")
    np.testing.assert_allclose(out[b], padded[S - ty:2 * S - ty, S - tx:2 * S - tx],
                               atol=1e-5)


@pytest.mark.parametrize("channels", [3, 1])
def test_identity_draw_is_unchanged_through_the_2x_resampling(channels):
  x = _images(channels=channels)
  params = ada.identity_params(B, x.shape)
  # Every op is present, so the full chain runs: pad, up, resample, down, colour, ...
  assert all(v is not None for v in params)
  out = jax.jit(ada.apply)(x, params)
  np.testing.assert_allclose(out, x, atol=1e-5)
  # p = 0 draws exactly that identity.
  drawn = ada.draw(jax.random.key(0), x.shape, 0.0, ada.PIPELINES["bgcfnc"])
  np.testing.assert_allclose(ada.apply(x, drawn), x, atol=1e-5)


def test_colour_ops_alone_match_their_closed_forms():
  x = _images(batch=32)
  mean = x.mean(axis=-1, keepdims=True)
  per_sample = lambda v: np.asarray(v)[:, None, None, None]

  out, params = _alone("brightness", x)
  np.testing.assert_allclose(out, x + per_sample(params.brightness), atol=1e-5)
  assert np.std(params.brightness) == pytest.approx(ada.BRIGHTNESS_STD, rel=0.5)

  out, params = _alone("contrast", x)  # About 0: the matrix scales the [-1, 1] values.
  np.testing.assert_allclose(out, x * per_sample(params.contrast), atol=1e-5)

  out, params = _alone("lumaflip", x)  # Householder: x - 2 (v.x) v = x - 2 mean_c.
  flip = per_sample(params.lumaflip)
  np.testing.assert_allclose(out, x - 2 * flip * mean, atol=1e-5)
  assert 0 < params.lumaflip.sum() < 32

  out, params = _alone("saturation", x)
  np.testing.assert_allclose(out, mean + (x - mean) * per_sample(params.saturation),
                             atol=1e-5)


def test_hue_is_a_rotation_about_the_grey_axis():
  x = _images(batch=3)
  # A third of a turn about (1, 1, 1) cycles the channels exactly.
  params = ada.AdaParams(hue=jnp.array([2 * np.pi / 3, -2 * np.pi / 3, 0.0]))
  out = np.asarray(ada.apply(x, params))
  np.testing.assert_allclose(out[0], x[0][..., [2, 0, 1]], atol=1e-5)
  np.testing.assert_allclose(out[1], x[1][..., [1, 2, 0]], atol=1e-5)
  np.testing.assert_allclose(out[2], x[2], atol=1e-6)
  # Any angle: against scipy's rotation about the unit grey axis.
  rotation = pytest.importorskip("scipy.spatial.transform").Rotation
  theta = np.array([0.3, -2.0, 3.0], np.float32)
  out = np.asarray(ada.apply(x, ada.AdaParams(hue=jnp.asarray(theta))))
  for b in range(3):
    r = rotation.from_rotvec(theta[b] * np.ones(3) / np.sqrt(3)).as_matrix()
    np.testing.assert_allclose(out[b], x[b] @ r.T, atol=1e-5)


def test_colour_matrix_composes_in_the_official_order():
  # Official: C = saturation @ hue @ lumaflip @ contrast @ brightness (applied right first).
  params = ada.AdaParams(brightness=jnp.array([0.3]), contrast=jnp.array([2.0]))
  x = _images(batch=1)
  np.testing.assert_allclose(ada.apply(x, params), (x + 0.3) * 2.0, atol=1e-5)


def test_cutout_and_noise_alone():
  x = _images(batch=32, size=S)
  out, params = _alone("cutout", x)
  for b in range(32):
    cx, cy = params.cutout_center[b]
    cols = np.abs((np.arange(S) + 0.5) / S - cx) < ada.CUTOUT_SIZE / 2
    rows = np.abs((np.arange(S) + 0.5) / S - cy) < ada.CUTOUT_SIZE / 2
    expected = x[b].copy()
    expected[np.ix_(rows, cols)] = 0
    np.testing.assert_array_equal(out[b], expected)
  out, params = _alone("noise", x)
  np.testing.assert_allclose(out, x + params.noise, atol=1e-6)
  sigma = (out - x).reshape(32, -1).std(axis=1)
  assert np.all(sigma < 4 * ada.NOISE_STD) and sigma.max() > 0.01


def test_imgfilter_with_unit_gains_is_the_identity_and_the_bank_is_the_official_one():
  bank = ada._FILTER_BANK
  # Band 0 is the low-pass, the rest band-passes: the bands sum to a unit impulse.
  assert bank.shape == (4, 43)
  impulse = np.zeros(43)
  impulse[21] = 1
  np.testing.assert_allclose(bank.sum(axis=0), impulse, atol=1e-6)
  x = _images(batch=2, size=32)
  out = ada.apply(x, ada.AdaParams(imgfilter=jnp.ones((2, 4))))
  np.testing.assert_allclose(out, x, atol=1e-5)
  # A gain on one band only changes that band's energy: a constant image is all band 0.
  flat = np.full((1, 32, 32, 3), 0.5, np.float32)
  out = ada.apply(flat, ada.AdaParams(imgfilter=jnp.array([[1.0, 3.0, 3.0, 3.0]])))
  np.testing.assert_allclose(out, flat, atol=1e-5)


def test_ops_fire_with_probability_p_and_rotation_twice_with_one_minus_sqrt():
  n = 20_000
  params = jax.device_get(ada.draw(jax.random.key(3), (n, S, S, 3), 0.3,
                                   {"scale": 1, "rotate": 1}))
  assert np.mean(params.scale != 1) == pytest.approx(0.3, abs=0.02)
  either = (params.rotate_pre != 0) | (params.rotate_post != 0)
  assert np.mean(either) == pytest.approx(0.3, abs=0.02)
  assert np.mean(params.rotate_pre != 0) == pytest.approx(1 - np.sqrt(0.7), abs=0.02)
  assert np.std(np.log2(params.scale[params.scale != 1])) == pytest.approx(ada.SCALE_STD,
                                                                            rel=0.1)


# ---------------------------------------------------------------- the official resampling

_SYM6 = [0.015404109327027373, 0.0034907120842174702, -0.11799011114819057,
         -0.048311742585633, 0.4910559419267466, 0.787641141030194, 0.3379294217276218,
         -0.07263752278646252, -0.021060292512300564, 0.04472490177066578,
         0.0017677118642428036, -0.007800708325034148]


def _official_geometric(images, g_inv):
  """The geometric execution of the official AugmentPipe, in PyTorch: the batch's own
  margin, reflect pad, sym6 up, affine_grid + grid_sample, sym6 down and crop."""
  torch = pytest.importorskip("torch")
  f = torch.nn.functional
  x = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).double()
  g = torch.from_numpy(np.asarray(g_inv, np.float64))
  n, c, h, w = x.shape

  def mat(*rows):
    return torch.tensor(rows, dtype=torch.float64)

  translate = lambda tx, ty: mat([1, 0, tx], [0, 1, ty], [0, 0, 1])
  scale = lambda sx, sy: mat([sx, 0, 0], [0, sy, 0], [0, 0, 1])
  hz = torch.tensor(_SYM6, dtype=torch.float64)
  hz_pad = len(_SYM6) // 4
  cx, cy = (w - 1) / 2, (h - 1) / 2
  cp = mat([-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1])
  cp = g @ cp.t()
  margin = cp[:, :2, :].permute(1, 0, 2).flatten(1)
  margin = torch.cat([-margin, margin]).max(dim=1).values
  margin = margin + torch.tensor([hz_pad * 2 - cx, hz_pad * 2 - cy] * 2, dtype=torch.float64)
  margin = margin.max(torch.zeros(4, dtype=torch.float64))
  margin = margin.min(torch.tensor([w - 1, h - 1] * 2, dtype=torch.float64))
  mx0, my0, mx1, my1 = (int(v) for v in margin.ceil())
  x = f.pad(x, [mx0, mx1, my0, my1], mode="reflect")
  g = translate((mx0 - mx1) / 2, (my0 - my1) / 2) @ g
  weight = hz.flip(0)[None, None, :].tile([c, 1, 1])
  pad = (len(_SYM6) + 1) // 2
  x = torch.stack([x, torch.zeros_like(x)], dim=4).reshape(n, c, x.shape[2], -1)[..., :-1]
  x = f.conv2d(x, weight.unsqueeze(2), groups=c, padding=[0, pad])
  x = torch.stack([x, torch.zeros_like(x)], dim=3).reshape(n, c, -1, x.shape[3])[:, :, :-1]
  x = f.conv2d(x, weight.unsqueeze(3), groups=c, padding=[pad, 0])
  g = scale(2, 2) @ g @ scale(0.5, 0.5)
  g = translate(-0.5, -0.5) @ g @ translate(0.5, 0.5)
  shape = [n, c, (h + hz_pad * 2) * 2, (w + hz_pad * 2) * 2]
  g = scale(2 / x.shape[3], 2 / x.shape[2]) @ g @ scale(shape[3] / 2, shape[2] / 2)
  grid = f.affine_grid(g[:, :2, :], shape, align_corners=False)
  x = f.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
  weight = hz[None, None, :].tile([c, 1, 1])
  pad = (len(_SYM6) - 1) // 2
  x = f.conv2d(x, weight.unsqueeze(2), groups=c, stride=[1, 2], padding=[0, pad])
  x = f.conv2d(x[..., hz_pad:-hz_pad], weight.unsqueeze(3), groups=c, stride=[2, 1],
               padding=[pad, 0])[:, :, hz_pad:-hz_pad]
  return x.permute(0, 2, 3, 1).numpy()


def test_general_geometric_ops_match_the_official_resampling():
  x = _images(batch=6, size=S)
  strengths = {"scale": 1, "rotate": 1, "aniso": 1, "xfrac": 1}
  params = ada.draw(jax.random.key(5), x.shape, 1.0, strengths)
  g_inv = ada.resample_inverse(params, x.shape[0])
  expected = _official_geometric(x, g_inv)
  np.testing.assert_allclose(ada.apply(x, params), expected, atol=2e-4)
  # Strong shrinking: the official margin is clamped at size - 1, like the fixed pad here.
  g_small = ada.scale2d(jnp.full((6,), 3.0), jnp.full((6,), 2.5), 6)
  np.testing.assert_allclose(ada.apply_geometric(x, g_small),
                             _official_geometric(x, g_small), atol=2e-4)


def test_blits_first_then_resampling_is_the_official_composite_transform():
  # The official runs the whole matrix through the resampling; on smooth images its
  # inexactness for flips and quarter turns is small, so the two must agree closely,
  # borders included.
  x = _smooth_images()
  params = ada.draw(jax.random.key(7), x.shape, 1.0, ada.PIPELINES["bg"])
  assert np.any(np.asarray(params.xflip) + np.asarray(params.rotate90) > 0)
  expected = _official_geometric(x, ada.geometric_inverse(params, x.shape[0]))
  error = np.abs(np.asarray(ada.apply(x, params)) - expected)
  assert error.max() < 0.08 and error.mean() < 0.02  # A wrong order: 0.3 and more.


def test_non_square_images_match_the_official_resampling():
  # Height and width have their own padding and resampling matrices.
  x = _images(batch=4, size=S)[:, :12, :, :]
  params = ada.draw(jax.random.key(9), x.shape, 1.0, {"scale": 1, "rotate": 1, "xfrac": 1})
  g_inv = ada.resample_inverse(params, x.shape[0])
  np.testing.assert_allclose(ada.apply(x, params), _official_geometric(x, g_inv), atol=2e-4)


# ---------------------------------------------------------------- gradients

def test_apply_is_differentiable_and_its_vjp_is_the_transpose():
  x = _images(batch=4)
  params = ada.draw(jax.random.key(2), x.shape, 0.8, ada.PIPELINES["bgcfnc"])
  linear = lambda im: ada.apply(im, params._replace(noise=None))  # Linear in the image
  # except for the colour offsets; remove them by differencing.
  affine = lambda im: linear(im) - linear(jnp.zeros_like(im))
  y = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
  (vjp,) = jax.vjp(affine, jnp.asarray(x))[1](jnp.asarray(y))
  np.testing.assert_allclose(jnp.vdot(affine(x), y), jnp.vdot(x, vjp), rtol=1e-4)


def test_r1_goes_through_the_augmentation():
  x = _images(batch=4)
  w = jnp.asarray(np.random.default_rng(3).normal(size=x.shape[1:]).astype(np.float32))

  def r1(weights, p):
    d_fn = lambda im: jnp.sum(ada.augment(jax.random.key(0), im, p, "bgc") * weights,
                              axis=(1, 2, 3))
    return losses.r1_penalty(d_fn, jnp.asarray(x))

  # Without augmentation R1 of a linear D is |w|^2 per sample; through ADA it differs.
  np.testing.assert_allclose(r1(w, 0.0), jnp.sum(w * w), rtol=1e-4)
  assert abs(float(r1(w, 1.0)) - float(jnp.sum(w * w))) > 1e-2
  grads = jax.grad(r1)(w, 1.0)  # Double backprop through the pipeline.
  assert np.all(np.isfinite(grads)) and float(jnp.abs(grads).sum()) > 0


# ---------------------------------------------------------------- the p controller

def _run_controller(signs, controller, p0=0.0):
  """Feeds one mean real-logit sign per D step through the jitted update."""
  step = jax.jit(lambda s, sign: ada.adjust(ada.accumulate(s, sign), controller))
  state, ps = ada.init_state(p0), []
  for sign in signs:
    state = step(state, jnp.float32(sign))
    ps.append(float(state.p))
  return np.array(ps), state


def test_p_rises_at_the_stated_rate_while_d_is_overconfident():
  controller = ada.Controller(batch_size=16, target=0.6, interval=4, kimg=100)
  rate = 16 * 4 / (100 * 1000)
  ps, state = _run_controller([0.9] * 16, controller)
  # p moves only every 4 D steps, by batch * interval / (kimg * 1000).
  expected = np.repeat(np.arange(1, 5) * rate, 4)
  expected = np.concatenate([[0.0] * 3, expected[:-3]])
  np.testing.assert_allclose(ps, expected, rtol=1e-5)
  assert float(state.rt) == pytest.approx(0.9)


def test_p_falls_to_zero_and_stays_there_when_d_is_not_overconfident():
  controller = ada.Controller(batch_size=16, target=0.6, interval=4, kimg=100)
  rate = 16 * 4 / (100 * 1000)
  ps, _ = _run_controller([0.2] * 12, controller, p0=1.5 * rate)
  np.testing.assert_allclose(ps[3::4], [0.5 * rate, 0.0, 0.0], atol=1e-8)
  # Signs averaged over the interval: 1, 1, 0.2, 0.2 -> r_t = 0.6 is not above the target.
  ps, state = _run_controller([1.0, 1.0, 0.2, 0.2], controller, p0=rate)
  assert float(state.rt) == pytest.approx(0.6)
  assert ps[-1] == pytest.approx(rate)  # sign(0) = 0: p holds.


def test_fixed_p_never_moves():
  controller = ada.Controller(batch_size=16, adaptive=False)
  ps, state = _run_controller([1.0] * 8, controller, p0=0.2)
  np.testing.assert_allclose(ps, 0.2)
  assert float(state.rt) == 1.0  # Still measured, for the logs.


# ---------------------------------------------------------------- config forms

@pytest.mark.parametrize("text, expected", [
    ("ada", augment.AugmentSpec(ada_pipeline="bgc")),
    ("ada:bgcfnc", augment.AugmentSpec(ada_pipeline="bgcfnc")),
    ("ada_fixed:0.2", augment.AugmentSpec(ada_pipeline="bgc", ada_fixed_p=0.2)),
    ("ada_fixed:0.5:bgcfnc", augment.AugmentSpec(ada_pipeline="bgcfnc", ada_fixed_p=0.5)),
    ("color,cutout", augment.AugmentSpec(diffaugment=("color", "cutout"))),
    ("", augment.AugmentSpec()),
])
def test_augment_forms_parse(text, expected):
  assert augment.parse(text) == expected


@pytest.mark.parametrize("text, message", [
    ("ada:bgx", "unknown ADA pipeline"),
    ("ada_fixed", "needs a probability"),
    ("ada_fixed:1.5", "needs a probability"),
    ("ada_fixed:high", "needs a probability"),
    ("ada:bgc:extra", "unknown ADA pipeline"),
    ("adaptive", "ada | ada:PIPELINE"),
])
def test_bad_augment_forms_fail_with_their_message(text, message):
  with pytest.raises(ValueError, match=message):
    augment.parse(text)


# ---------------------------------------------------------------- in the training loop

def _tiny_ada_config(**overrides):
  from configs import ps_pretrain  # pylint: disable=g-import-not-at-top

  config = ps_pretrain.get_config("tiny")
  config.loss.pl_weight = 0.0  # One step variant to compile (R1, through ADA, every step).
  config.augment = "ada"
  # A fast controller, so that p visibly moves within a few steps: 0.02 per interval.
  config.ada = dict(target=0.6, interval=2, kimg=config.batch_size * 2 / 1000 / 0.02,
                    initial_p=0.0)
  config.update(overrides)
  return config


def _expected_p(signs, controller, p0=0.0):
  """The controller replayed on the host from the logged per-step mean signs."""
  ps, _ = _run_controller(signs, controller, p0)
  return ps


def test_quick_ada_preset_trains_logs_p_and_p_follows_the_logged_signs(tmp_path):
  from gantransfer_jax import config_files  # pylint: disable=g-import-not-at-top
  from gantransfer_jax import train  # pylint: disable=g-import-not-at-top
  from gantransfer_jax import writers  # pylint: disable=g-import-not-at-top

  config = config_files.get_config("finetune:ada,quick")
  assert config.augment == "ada" and config.init == "scratch"
  config.update_from_flattened_dict({
      "data.source": "synth:primitives_ps", "total_steps": 8, "log_every": 1,
      "sample_every": 8, "checkpoint_every": 8, "loss.pl_weight": 0.0,
      "ada.kimg": config.batch_size * 4 / 1000 / 0.05})  # 0.05 per interval of 4.
  state = train.train_and_evaluate(config, str(tmp_path / "ada"))
  records = writers.read_metrics(str(tmp_path / "ada"))
  records = [r for r in records if "augment/p" in r]
  assert [r["step"] for r in records] == list(range(1, 9))
  controller, _ = augment.ada_controller(config)
  expected = _expected_p([r["scores/real_sign"] for r in records], controller)
  np.testing.assert_allclose([r["augment/p"] for r in records], expected, atol=1e-6)
  assert float(state.augment_state.p) == pytest.approx(expected[-1], abs=1e-6)
  assert any(np.isfinite(r["loss/r1"]) for r in records if "loss/r1" in r)


def test_resume_keeps_p(tmp_path):
  from gantransfer_jax import train  # pylint: disable=g-import-not-at-top

  config = _tiny_ada_config(total_steps=6, log_every=3, sample_every=6,
                            checkpoint_every=3)
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  assert float(straight.augment_state.p) > 0  # The test needs a p that moved.
  first = _tiny_ada_config(total_steps=3, log_every=3, sample_every=3, checkpoint_every=3)
  half = train.train_and_evaluate(first, str(tmp_path / "resumed"))
  assert int(half.augment_state.d_steps) == 1  # Mid-interval: the statistics must persist.
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.augment_state),
               jax.device_get(resumed.augment_state))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.d_params),
               jax.device_get(resumed.d_params))


def test_checkpoints_from_before_ada_still_resume(tmp_path):
  from gantransfer_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from gantransfer_jax import parallel  # pylint: disable=g-import-not-at-top
  from gantransfer_jax import train  # pylint: disable=g-import-not-at-top
  from gantransfer_jax.models import gan as gan_lib  # pylint: disable=g-import-not-at-top

  config = _tiny_ada_config()
  config.ada.initial_p = 0.25
  gan = builder.build_gan(config)
  state = train.create_train_state(config, gan, *train.make_optimizers(config, gan),
                                   parallel.create_mesh())
  old = {name: getattr(state, name) for name in state.__dataclass_fields__
         if name != "augment_state"}
  old["step"] = old["step"] + 5
  old["pl_mean"] = old["pl_mean"] + 1.5
  checkpointer = checkpoints.Checkpointer(str(tmp_path))
  checkpointer.save(5, old, config)
  checkpointer.wait()
  restored = train.restore_for_resume(checkpointer, state)
  checkpointer.close()
  assert int(restored.step) == 5 and float(restored.pl_mean) == 1.5
  assert float(restored.augment_state.p) == 0.25  # The configured initial p.


def test_plot_compare_draws_p_for_ada_runs(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from gantransfer_jax import plot  # pylint: disable=g-import-not-at-top

  def write(name, with_p):
    workdir = tmp_path / name
    os.makedirs(workdir)
    (workdir / "config.json").write_text(json.dumps({"task": "finetune", "method": name}))
    with open(workdir / "metrics.jsonl", "w") as f:
      for step in (100, 200, 300):
        record = {"step": step, "perf/kimg": step / 100, "loss/d": 0.5}
        if with_p:
          record["augment/p"] = step / 1000
        f.write(json.dumps(record) + "\n")
        f.write(json.dumps({"step": step, "perf/kimg": step / 100,
                            "eval/fid": 50.0 - step / 10, "eval/recall": 0.1}) + "\n")
    return plot.load_run(str(workdir))

  plain = plot.compare_figure([write("scratch", False)])
  assert len(plain.axes) == 2  # No ADA run: the figure is unchanged.
  fig = plot.compare_figure([write("scratch2", False), write("ada", True)])
  p_axis = fig.axes[2]
  assert "p" in p_axis.get_title()
  np.testing.assert_allclose(p_axis.get_lines()[-1].get_ydata(), [0.1, 0.2, 0.3])
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  plt.close("all")
