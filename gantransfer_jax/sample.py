r"""Sample grids from a trained checkpoint, for every model family.

  python -m gantransfer_jax.sample --checkpoint=WORKDIR --out=DIR [--num=16] [--seed=0]

always writes DIR/samples.png (the EMA generator; conditional models draw conditions
as in training). Family-specific extras:

  --noise_mode=M         StyleGAN2's per-pixel noise: random (drawn per image, the
                         default), const (the checkpoint's fixed noise maps: a converted
                         official checkpoint then reproduces the official
                         noise_mode='const' images) or none.

  --mix                  style mixing (StyleGAN2, AdaFM's SmallHead; paper 002 Fig. 6):
                         DIR/mix.png, row i column j = the coarse styles of z_i with the
                         styles of z_j from AdaIN/w layer `--crossover` on. The first row
                         and column show z_j and z_i unmixed.
  DIP (a run with dip.prior; paper 003):
    DIR/samples_{priors,interpolation,kmeans,gmm}.png      eq. 5-6 samplers
    --edits=cutmix,cutout,greyscale    semantic diffusion: DIR/edit_<kind>.png, rows of
                         [edited image | samples conditioned on its prior]
    --sketch=PATH        the same for an external sketch image (DIR/edit_sketch.png)
    --invert=N           invert the first N training images (z and per-block
                         embeddings, Adam lr 0.1, `--invert_steps`): DIR/inversion.png
                         (query over reconstruction) and the error per iteration in
                         DIR/inversion.json.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from absl import logging

from gantransfer_jax import builder
from gantransfer_jax import checkpoints
from gantransfer_jax import errors
from gantransfer_jax import images as image_lib
from gantransfer_jax import progress
from gantransfer_jax.data import sampler as sampler_lib
from gantransfer_jax.models import families
from gantransfer_jax.models import gan as gan_lib

EDITS = ("cutmix", "cutout", "greyscale")

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Workdir, checkpoints folder or step "
                                  "folder of a trained run.")
_OUT = flags.DEFINE_string("out", None, "Folder for the PNG grids.")
_NUM = flags.DEFINE_integer("num", 16, "Samples per grid.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of latents, conditions and edits.")
_MIX = flags.DEFINE_bool("mix", False, "Also write a style-mixing grid.")
_CROSSOVER = flags.DEFINE_integer("crossover", None, "First style layer taken from the "
                                  "second latent (default: half of them).")
_EDITS = flags.DEFINE_list("edits", [], f"DIP semantic-diffusion edits among {EDITS}.")
_SKETCH = flags.DEFINE_string("sketch", None, "DIP: an external sketch image to condition on.")
_INVERT = flags.DEFINE_integer("invert", 0, "DIP: invert this many training images.")
_INVERT_STEPS = flags.DEFINE_integer("invert_steps", 200, "Adam steps of the inversion.")
_NOISE_MODE = flags.DEFINE_enum("noise_mode", None, ["random", "const", "none"],
                                "StyleGAN2 noise (default: the checkpoint config's "
                                "stylegan2.noise_mode, else random).")


class Model:
  """A checkpoint's EMA generator, ready to sample, with its training data if conditional."""

  def __init__(self, checkpoint: str, cache_dir: str | None = None,
               noise_mode: str | None = None):
    self.config, params = checkpoints.restore_params(checkpoint)
    self.params, self.state = params["generator_ema"], params["generator_state"]
    if noise_mode is not None:
      try:  # Fails now, not after the data is loaded.
        gan_lib.set_noise_mode(self.config, noise_mode, self.state)
      except ValueError as error:
        raise ValueError(f"{checkpoint}: {error}") from None
    self.gan = builder.build_gan(self.config)
    self.sampler = None
    if self.gan.cond_dim:
      self.sampler = sampler_lib.make_sampler(self.config, cache_dir=cache_dir)

  @property
  def is_dip(self) -> bool:
    return bool((self.config.get("dip") or {}).get("prior"))

  def conditions(self, key: jax.Array, n: int):
    return None if self.sampler is None else self.sampler.sample_cond(self.sampler.data, key, n)

  def samples(self, key: jax.Array, num: int) -> jax.Array:
    k_z, k_cond, k_noise = jax.random.split(key, 3)
    z = jax.random.normal(k_z, (num, self.gan.z_dim))
    return self.generate(z, self.conditions(k_cond, num), k_noise)

  def generate(self, z: jax.Array, cond: jax.Array | None, key: jax.Array) -> jax.Array:
    """Images of latents `z` (and conditions), as the grids draw them."""
    return self.gan.sample(self.params, self.state, z, cond, key)


  def mixing_grid(self, key: jax.Array, num: int, crossover: int | None) -> np.ndarray:
    """(num + 1)^2 images: unmixed z_j on top, unmixed z_i on the left, mixes inside.

    A conditional model draws one condition per latent, kept with it in the mixes.
    """
    k_z, k_cond, k_noise = jax.random.split(key, 3)
    z = jax.random.normal(k_z, (num, self.gan.z_dim))
    cond = self.conditions(k_cond, num)
    rows, cols = jnp.repeat(z, num, axis=0), jnp.tile(z, (num, 1))
    row_cond, col_cond = (None, None) if cond is None else (
        jnp.repeat(cond, num, axis=0), jnp.tile(cond, (num, 1)))
    mixed = self.gan.sample_mixed(self.params, self.state, rows, cols, crossover, k_noise,
                                  row_cond, col_cond)
    plain = self.gan.sample(self.params, self.state, z, cond, k_noise)
    corner = jnp.zeros_like(plain[:1])
    grid = [jnp.concatenate([corner, plain])]
    for i in range(num):
      grid.append(jnp.concatenate([plain[i:i + 1], mixed[i * num:(i + 1) * num]]))
    return np.asarray(jnp.concatenate(grid))


def _dip_outputs(model: Model, out: str, key: jax.Array, num: int, edits: Sequence[str],
                 sketch: str | None, num_invert: int, invert_steps: int) -> dict[str, str]:
  from gantransfer_jax import dip  # pylint: disable=g-import-not-at-top
  from gantransfer_jax import priors  # pylint: disable=g-import-not-at-top

  generator = model.gan.generator
  # DIP's grids run the generator module itself: with the params it sees (transforms applied).
  g_vars = gan_lib.variables(model.gan.network_params(gan_lib.GENERATOR, model.params),
                             model.state)
  train_priors = model.sampler.data["priors"]
  train_images = sampler_lib.uint8_to_float(jnp.asarray(model.sampler.data["images"]))
  k_grids, k_edit, k_invert = jax.random.split(key, 3)
  embed = dip.embedder(model.gan, model.params, model.state)
  paths = dip.write_sample_grids(generator, g_vars, embed, train_priors, out, k_grids,
                                 num=num)
  if not edits and not sketch and not num_invert:
    return paths

  prior_fn = priors.load_prior(model.config.dip.prior)
  per_row = 7

  def edit_grid(name: str, edited: jax.Array, key: jax.Array) -> None:
    conditions = dip.embed_priors(embed, dip.edited_priors(prior_fn, edited))
    z = dip.sample_z(key, len(edited) * per_row, generator)
    generated = dip.generate(generator, g_vars, z, jnp.repeat(conditions, per_row, axis=0))
    rows = [jnp.concatenate([edited[i:i + 1], generated[i * per_row:(i + 1) * per_row]])
            for i in range(len(edited))]
    paths[f"edit_{name}"] = image_lib.save_grid(os.path.join(out, f"edit_{name}.png"),
                                                np.asarray(jnp.concatenate(rows)),
                                                num_cols=per_row + 1)

  count = min(4, len(train_images))
  for index, name in enumerate(edits):
    k_pick, k_box, k_z = jax.random.split(jax.random.fold_in(k_edit, index), 3)
    picked = train_images[jax.random.permutation(k_pick, len(train_images))[:2 * count]]
    first, second = picked[:count], picked[count:2 * count]
    box = dip.random_box(k_box, model.config.resolution)
    if name == "cutmix":
      edited = dip.cutmix(first, second if len(second) == count else first[::-1], box)
    elif name == "cutout":
      edited = dip.cutout(first, box)
    else:
      edited = dip.greyscale(first)
    edit_grid(name, edited, k_z)
  if sketch:
    edit_grid("sketch", jnp.asarray(dip.load_sketch(sketch, model.config.resolution))[None],
              jax.random.fold_in(k_edit, len(edits)))

  if num_invert:
    query = train_images[:num_invert]
    initial = dip.embed_priors(embed, train_priors[:num_invert])
    z, embeddings, errors = dip.invert(generator, g_vars, query, initial, k_invert,
                                       steps=invert_steps)
    reconstruction = dip.generate(generator, g_vars, z, embeddings)
    paths["inversion"] = image_lib.save_grid(
        os.path.join(out, "inversion.png"),
        np.asarray(jnp.concatenate([query, reconstruction])), num_cols=num_invert)
    errors = np.asarray(errors).tolist()
    final = np.asarray(dip.reconstruction_error(generator, g_vars, z, embeddings, query))
    if jax.process_index() == 0:  # Every process of a multi-host run has the same curve.
      with open(os.path.join(out, "inversion.json"), "w", encoding="utf-8") as f:
        json.dump({"errors": errors, "final_error": float(final.mean()),
                   "learning_rate": 0.1}, f, indent=2)
    logging.info("inversion: reconstruction error %.4f -> %.4f over %d Adam steps",
                 errors[0], float(final.mean()), invert_steps)
  return paths


def write_samples(checkpoint: str, out: str, *, num: int = 16, seed: int = 0,
                  mix: bool = False, crossover: int | None = None,
                  edits: Sequence[str] = (), sketch: str | None = None,
                  num_invert: int = 0, invert_steps: int = 200,
                  noise_mode: str | None = None) -> dict[str, str]:
  """Writes the grids described in the module docstring; returns {name: path}."""
  unknown = set(edits) - set(EDITS)
  if unknown:
    raise ValueError(f"unknown edits {sorted(unknown)}; valid: {', '.join(EDITS)}")
  os.makedirs(out, exist_ok=True)
  model = Model(checkpoint, cache_dir=os.path.join(out, "data_cache"), noise_mode=noise_mode)
  if (edits or sketch or num_invert) and not model.is_dip:
    raise ValueError("--edits, --sketch and --invert need a DIP checkpoint (dip.prior set); "
                     f"{checkpoint} is a {model.config.model!r} run without priors")
  if mix and not families.get(model.config.model).supports_style_mixing:
    style_based = families.names_with("supports_style_mixing")
    raise ValueError(f"--mix needs a style-based generator ({' or '.join(style_based)}), not "
                     f"{model.config.model!r}")
  key = jax.random.key(seed)
  k_samples, k_mix, k_dip = jax.random.split(key, 3)
  paths = {"samples": image_lib.save_grid(os.path.join(out, "samples.png"),
                                          np.asarray(model.samples(k_samples, num)))}
  if mix:
    side = max(2, int(np.sqrt(num)))
    paths["mix"] = image_lib.save_grid(os.path.join(out, "mix.png"),
                                       model.mixing_grid(k_mix, side, crossover),
                                       num_cols=side + 1)
  if model.is_dip:
    paths.update(_dip_outputs(model, out, k_dip, num, edits, sketch, num_invert,
                              invert_steps))
  return paths


@errors.one_line_user_errors()
def main(argv):
  del argv
  progress.quiet_library_logs()
  if not _CHECKPOINT.value or not _OUT.value:
    raise app.UsageError("--checkpoint and --out are required")
  paths = write_samples(_CHECKPOINT.value, _OUT.value, num=_NUM.value, seed=_SEED.value,
                        mix=_MIX.value, crossover=_CROSSOVER.value, edits=_EDITS.value,
                        sketch=_SKETCH.value, num_invert=_INVERT.value,
                        invert_steps=_INVERT_STEPS.value, noise_mode=_NOISE_MODE.value)
  for name, path in paths.items():
    print(f"{name}: {path}")


if __name__ == "__main__":
  app.run(main)
