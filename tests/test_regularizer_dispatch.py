"""config.regularizer_dispatch='cond': one compiled step for every (R1, path length)
combination, the same numbers and metric keys as the static steps."""

import jax
import numpy as np
import pytest

from configs import ps_pretrain
from gantransfer_jax import parallel
from gantransfer_jax import progress
from gantransfer_jax import train
from gantransfer_jax import validation

# Steps 0-3 of this schedule meet all four combinations: (R1+PL, plain, PL, R1).
SCHEDULE = [dict(do_r1=True, do_pl=True), dict(do_r1=False, do_pl=False),
            dict(do_r1=False, do_pl=True), dict(do_r1=True, do_pl=False)]
# Each step is compared from the same input state: the same computation, fused
# differently by XLA inside the branches, so float32 rounding only. (Compared along two
# separate 4-step trajectories instead, Adam's normalisation magnifies it on near-zero
# gradients: D's biases differed by 9e-5 after 4 steps, exactly as much as the static
# step on one device against four.) The metrics: the tolerance of test_train.py's device
# test. The state: D's first block has near-cancelling gradients at initialisation (D
# cannot yet tell reals from fakes), so one step's rounding shows in them. Measured with
# the FIR filters as fused slices (layers.upfirdn2d), the largest differences were, for
# cond against static: 2.9e-5 in D's parameters and 4.1e-4 in its Adam moments (the
# PL-only step); for the same static step on one device against four (the same program,
# another reduction order): 6.6e-5 and 3.5e-4 (the plain step). That is the rounding floor
# of two equivalent programs. A wrong branch changes the metrics or their keys, and moves
# parameters by about the learning rate (2e-3).
TOLERANCE = dict(rtol=1e-4, atol=1e-5)
STATE_TOLERANCE = dict(rtol=1e-4, atol=1e-4)
OPT_STATE_TOLERANCE = dict(rtol=1e-4, atol=1e-3)
FIELDS = ("g_params", "g_ema_params", "d_params", "g_opt_state", "d_opt_state",
          "g_state", "d_state", "pl_mean", "step", "augment_state")


def lazy_config(dispatch):
  """tiny, with R1 every 3rd and path length every 2nd step (both branched under cond)."""
  config = ps_pretrain.get_config("tiny")
  config.loss.r1_interval = 3
  config.loss.pl_interval = 2
  config.regularizer_dispatch = dispatch
  return config


def test_cond_matches_static_on_all_four_combinations_and_compiles_once():
  mesh = parallel.create_mesh()  # conftest's 4 emulated devices.
  static = train.build(lazy_config("static"), mesh)
  cond = train.build(lazy_config("cond"), mesh)
  assert isinstance(cond.train_step, train.CondTrainStep)
  state = static.state
  for flags in SCHEDULE:
    given = jax.device_get(state)  # Both steps donate their input: one copy each.
    state, static_metrics = static.train_step(
        jax.device_put(given, parallel.replicated(mesh)), static.data, **flags)
    cond_state, cond_metrics = cond.train_step(
        jax.device_put(given, parallel.replicated(mesh)), cond.data, **flags)
    # The skipped regulariser's metric is absent, never a placeholder.
    assert sorted(cond_metrics) == sorted(static_metrics), flags
    assert ("loss/r1" in cond_metrics) == flags["do_r1"], flags
    assert ("loss/pl" in cond_metrics) == flags["do_pl"], flags
    expected, got = jax.device_get((static_metrics, cond_metrics))
    for name in expected:
      np.testing.assert_allclose(got[name], expected[name], err_msg=f"{flags} {name}",
                                 **TOLERANCE)
    expected, got = jax.device_get((state, cond_state))
    for field in FIELDS:
      jax.tree.map(lambda a, b, field=field: np.testing.assert_allclose(
          b, a, err_msg=f"{flags} {field}",
          **(OPT_STATE_TOLERANCE if field.endswith("opt_state") else STATE_TOLERANCE)),
          getattr(expected, field),
          getattr(got, field))
  assert float(state.pl_mean) != 0  # Path length did run (and moved its mean).
  assert cond.train_step._cache_size() == 1  # pylint: disable=protected-access
  text = cond.train_step.lower(cond.state, cond.data).as_text()
  assert text.count("stablehlo.case") >= 2  # R1's branch and path length's.


def test_path_length_mean_is_unchanged_on_a_step_without_it():
  config = lazy_config("cond")
  setup = train.build(config, parallel.create_mesh())
  state, _ = setup.train_step(setup.state, setup.data, **SCHEDULE[0])  # Moves pl_mean.
  before = float(state.pl_mean)
  state, metrics = setup.train_step(state, setup.data, **SCHEDULE[1])
  assert float(state.pl_mean) == before
  assert "loss/pl" not in metrics


def test_first_calls_compiles_the_cond_step_once_for_every_combination():
  config = lazy_config("cond")
  setup = train.build(config, parallel.create_mesh())
  lines = []
  compiles = progress.FirstCalls("the train step", log=lines.append)
  state = setup.state
  for flags in SCHEDULE:
    state, metrics = compiles.call(setup.train_step, state, setup.data, **flags)
    assert ("loss/r1" in metrics) == flags["do_r1"] and ("loss/pl" in metrics) == flags["do_pl"]
  assert [line for line in lines if line.startswith("compiling")] == [
      "compiling the train step..."]
  assert int(state.step) == len(SCHEDULE)


def test_a_regulariser_on_every_step_is_compiled_in_not_branched():
  config = lazy_config("cond")
  config.loss.r1_interval = 1  # The paper preset's R1.
  config.loss.pl_weight = 0.0
  assert train.constant_regularizers(config) == {"do_r1": True, "do_pl": False}
  setup = train.build(config, parallel.create_mesh())
  text = setup.train_step.lower(setup.state, setup.data).as_text()
  assert "stablehlo.case" not in text and "stablehlo.if" not in text
  with pytest.raises(ValueError, match="do_r1=False needs regularizer_dispatch='static'"):
    setup.train_step(setup.state, setup.data, do_r1=False, do_pl=False)


def test_bad_dispatch_fails_validation(tmp_path):
  config = lazy_config("lax.cond")
  with pytest.raises(validation.ConfigError,
                     match="regularizer_dispatch 'lax.cond' is unknown; valid: static, cond"):
    validation.validate_train_config(config, str(tmp_path))
