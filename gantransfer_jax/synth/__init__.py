"""On-device synthetic pretraining data: the Primitives-PS family (paper 001).

    fn = make_synthesizer("primitives_ps", 256)  # n_shapes=100, size_policy="decay"
    images = fn(jax.random.key(0), 16)  # float32 [16, 256, 256, 3] in [-1, 1]

`SYNTHESIZERS` lists the valid names. `render` also returns the drawn shapes and
which one is visible at each pixel. `reference_cv2` generates the same way the
authors do, one image at a time with numpy and OpenCV, for benchmarks and
statistical cross-checks.
"""

from gantransfer_jax.synth.shapes import SIZE_POLICIES, Shapes
from gantransfer_jax.synth.synthesizers import (
    BACKGROUNDS, DISPLAY_NAMES, OPTIONS, SYNTHESIZERS, Rendered, SynthConfig, Synthesizer,
    make_config, make_synthesizer, render)

__all__ = [
    "BACKGROUNDS", "DISPLAY_NAMES", "OPTIONS", "SIZE_POLICIES", "SYNTHESIZERS", "Rendered",
    "Shapes", "SynthConfig", "Synthesizer", "make_config", "make_synthesizer", "render",
]
