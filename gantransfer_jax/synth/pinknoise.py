"""PinkNoise: white noise shaped by a separable 1/f^alpha spectrum (NOTES section 1).

Per channel: white noise -> FFT -> multiply by w = 1 / (fy^a + fx^b + 2 eps) with
f = |fftfreq(S, d=0.2)|, f[0] = 0.1 f[1], a (rows) and b (columns) drawn from
U[0.5, 3.5) independently for each channel -> inverse FFT. The spectrum is a sum
of two 1-D power laws, not a radial one, hence the authors' horizontal and
vertical streaks. The three channels are then min-max normalised jointly to
[0, 255] and truncated to integers, as the authors store them in uint8.

w is real and even in each frequency, so ifft2(w * fft2(noise)) is real and
equals irfft2(w * rfft2(noise)); rfft2(noise) is drawn directly in the frequency
domain (see white_spectrum), so one real inverse FFT per channel remains.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gantransfer_jax.synth.bits import uniforms

EXPONENT_RANGE = (0.5, 3.5)
WORDS = 12  # Random uint32 words per PinkNoise image: 6 exponents, 3 x 2 hash keys.
_FREQ_SPACING = 0.2  # The authors' fftfreq(d=0.2): scales frequencies by 5.
_EPS = 1e-6


def frequencies(resolution: int) -> np.ndarray:
  """|fftfreq(S, d=0.2)| with the zero frequency replaced by a tenth of the first."""
  freq = np.abs(np.fft.fftfreq(resolution, d=_FREQ_SPACING))
  freq[0] = 0.1 * freq[1]
  return freq


def spectral_weights(exponents: jax.Array, resolution: int) -> jax.Array:
  """w over the rfft2 half plane, float32 [..., S, S//2 + 1]; exponents [..., 2] = (a, b)."""
  freq = jnp.asarray(frequencies(resolution), jnp.float32)
  row_term = freq[:, None] ** exponents[..., 0, None, None]
  col_term = freq[: resolution // 2 + 1] ** exponents[..., 1, None, None]
  return 1.0 / (row_term + col_term + 2 * _EPS)


def normalise_jointly(field: jax.Array) -> jax.Array:
  """Min-max over all pixels and channels of one image to integer-valued [0, 255]."""
  lo, hi = field.min(), field.max()
  return jnp.floor((field - lo) * (255.0 / jnp.maximum(hi - lo, 1e-12)))


def _mix32(x: jax.Array) -> jax.Array:
  """lowbias32 (C. Wellons' hash-prospector): a bijective uint32 hash with low bias."""
  x = (x ^ (x >> 16)) * np.uint32(0x21F0AAAD)
  x = (x ^ (x >> 15)) * np.uint32(0xD35A2D97)
  return x ^ (x >> 15)


def _linear_index(shape: tuple[int, ...]) -> jax.Array:
  """Row-major position of every element of `shape`, uint32, from broadcasted iotas."""
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index += jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
    stride *= shape[axis]
  return index


def hashed_normals(seeds: jax.Array, shape: tuple[int, ...], offset: int = 0) -> jax.Array:
  """N(0, 1) values of `shape` per pair of uint32 seeds: seeds [..., 2] -> [..., *shape].

  Element i of a stream is hash(offset + i): calls with offsets 0, n, 2n, ...
  continue one stream. White noise is the bulk of the random numbers (S^2 per
  channel): with jax.random.normal (threefry) it cost 2.4 ms per 256^2 RGB
  field on one EPYC core, more than the field's inverse FFTs; this
  counter-based hash, keyed by 64 threefry bits, costs 0.7 ms, mostly the
  inverse error function. It is exact integer math, so identical on every
  backend. mix(mix(counter + k0) ^ k1) is a bijection of the counter for each
  key, and two keys give shifted copies of one stream only if their k1 are
  equal and their k0 differ by less than the stream length (probability
  ~ length / 2^64). Normals come from the top 23 bits (tails to 5.4 sigma).
  """
  expand = (...,) + (None,) * len(shape)
  k0, k1 = seeds[..., 0][expand], seeds[..., 1][expand]
  bits = _mix32(_mix32(_linear_index(shape) + np.uint32(offset) + k0) ^ k1)
  # ((bits >> 9) + 0.5) * 2^-22 - 1 is exact in float32 and symmetric in (-1, 1).
  centred = ((bits >> 9).astype(jnp.float32) + 0.5) * np.float32(2.0**-22) - 1.0
  return np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(centred)


def _hermitian(column: jax.Array) -> jax.Array:
  """(Z[k] + conj Z[-k]) / sqrt(2) along the last axis: Hermitian, same variances."""
  mirrored = jnp.roll(jnp.flip(column, axis=-1), 1, axis=-1)  # Z[-k mod S].
  return (column + jnp.conj(mirrored)) * np.float32(np.sqrt(0.5))


def white_spectrum(seeds: jax.Array, resolution: int) -> jax.Array:
  """rfft2 of real white noise, drawn in the frequency domain, complex64 [3, S, S//2 + 1].

  seeds: uint32 [3, 2], the hash keys of the three channels.
  Skips the forward FFT and keeps the distribution: the rfft2 of iid real
  Gaussian noise is iid complex Gaussian, except in the columns kx = 0 and
  kx = S/2, which are Hermitian in ky (X[-ky] = conj X[ky], real where
  ky = -ky). Those columns are symmetrised, which keeps their variances and
  makes the input of irfft2 exactly Hermitian, so its result is defined on
  every backend. Scale is irrelevant: every field is min-max normalised.
  """
  shape = (resolution, resolution // 2 + 1)
  # Real and imaginary parts come from separate calls (one stream): slicing
  # one joint draw inside the renderer's lax.map compiled to scalar code on
  # XLA:CPU, 2x slower for the whole field.
  z = jax.lax.complex(hashed_normals(seeds, shape),
                      hashed_normals(seeds, shape, offset=shape[0] * shape[1]))
  z = z.at[..., 0].set(_hermitian(z[..., 0]))  # kx = 0.
  return z.at[..., -1].set(_hermitian(z[..., -1]))  # kx = S/2.


def shaped_noise(spectrum: jax.Array, exponents: jax.Array) -> jax.Array:
  """Pink field from a white spectrum [3, S, S//2+1] and exponents [3, 2]; raw, [S, S, 3]."""
  resolution = spectrum.shape[-2]
  fields = jnp.fft.irfft2(spectrum * spectral_weights(exponents, resolution),
                          s=(resolution, resolution))
  return jnp.moveaxis(fields, 0, -1)


def raw_pink_noise(words: jax.Array, resolution: int) -> tuple[jax.Array, jax.Array]:
  """One unnormalised pink field [S, S, 3] from words [WORDS], and its exponents (a, b) [3, 2]."""
  exponents = uniforms(words[:6], *EXPONENT_RANGE).reshape(3, 2)
  spectrum = white_spectrum(words[6:].reshape(3, 2), resolution)
  return shaped_noise(spectrum, exponents), exponents


def pink_noise(words: jax.Array, resolution: int) -> tuple[jax.Array, jax.Array]:
  """One PinkNoise image from words [WORDS]: integer-valued float32 [S, S, 3] in [0, 255].

  Also returns the exponents (a, b) of the three channels, [3, 2].
  """
  field, exponents = raw_pink_noise(words, resolution)
  return normalise_jointly(field), exponents
