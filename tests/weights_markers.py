"""Skip markers for tests that need offline weights (`.ci/run` and `launch/setup.sh --test`
fetch both, so CI runs these tests; a bare checkout skips them with the fetch command)."""

import os

import pytest

from gantransfer_jax.pretrained import assets

needs_inception = pytest.mark.skipif(
    not os.path.exists(assets.inception_weights_path()),
    reason=f"FID Inception weights absent; fetch with `{assets.INCEPTION_FETCH_COMMAND}`")
needs_mobilenet = pytest.mark.skipif(
    not os.path.exists(assets.mobilenet_v2_weights_path()),
    reason=f"MobileNetV2 weights absent; fetch with `{assets.MOBILENET_V2_FETCH_COMMAND}`")
