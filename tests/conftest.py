"""Test-wide setup: emulate several CPU devices before JAX initialises.

Multi-device code (meshes, NamedSharding) is tested on these emulated devices; tests
that want one device build their mesh from `jax.devices()[:1]`.
"""

import os

NUM_TEST_DEVICES = 4

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Single-threaded Eigen kernels: with several emulated devices on few cores, XLA's CPU
# runtime can resume a device's program (its all-reduce) on an Eigen pool thread and block
# it there waiting for the other devices, whose work is queued on that same pool; after
# 40 s the rendezvous aborts the process ("Termination timeout for all reduce", the xdist
# "node down" of test_select). Measured on 2 cores, test_torch_pickle + test_select's
# training test in one process: aborts in 2 of 3, 1 of 4 and 1 of 5 runs with the default
# (with 2 devices too, and without async dispatch), a hang at zero load with the timeout
# raised to 400 s (a deadlock, not a slow peer), and 0 aborts in 4 runs with this flag.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + f" --xla_force_host_platform_device_count={NUM_TEST_DEVICES}"
    + ("" if "xla_cpu_multi_thread_eigen" in os.environ.get("XLA_FLAGS", "")
       else " --xla_cpu_multi_thread_eigen=false")
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
