"""Test-wide setup: emulate several CPU devices before JAX initialises.

Multi-device code (meshes, NamedSharding) is tested on these emulated devices; tests
that want one device build their mesh from `jax.devices()[:1]`.
"""

import os

NUM_TEST_DEVICES = 4

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={NUM_TEST_DEVICES}"
).strip()
# TensorFlow (pulled in by clu writers / tfds) must never grab an accelerator.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tempfile  # noqa: E402

import jax  # noqa: E402

# Tests rebuild the same tiny train steps many times (each run makes new closures, so
# jit's in-memory cache misses); XLA's persistent cache turns those into disk hits.
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("GANTRANSFER_JAX_TEST_XLA_CACHE",
                                 os.path.join(tempfile.gettempdir(), "gantransfer_jax_xla_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
