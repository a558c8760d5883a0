"""Every built-in detector family, imported so that :data:`MODELS` is complete, and :func:`build`.

Importing this module imports torch and MONAI; code that only needs names, parameters or score
names (config validation, the CLI) uses the torch-free :mod:`models.catalog` instead.
"""

from __future__ import annotations

from models import alphagan, baselines, geom, joint, simple_baselines, synth, vae, wgan  # noqa: F401  (each registers its detectors)
from models.registry import MODELS, Detector


def build(name: str, params, in_channels: int, patch_size: int) -> Detector:
    """A fresh detector ``name`` with hyper-parameters ``params`` for (C=in_channels, patch_size^dims) inputs."""
    return MODELS[name](params, in_channels, patch_size)
