"""Every detector family's ``model.py``, imported so that :data:`DETECTORS` is complete, and :func:`build`.

The families are the folders of :mod:`models.detectors` (found by :mod:`models.catalog`); there is
no list to edit. Importing this module imports torch and MONAI; code that only needs names,
parameters or score names (config validation, the CLI) uses the torch-free :mod:`models.catalog`.
"""

from __future__ import annotations

import importlib

from models.catalog import FAMILIES
from models.detector import Detector
from models.registry import DETECTORS

for _family in FAMILIES:
    importlib.import_module(f"models.detectors.{_family}.model")  # registers the family's detectors


def build(name: str, params, in_channels: int, patch_size: int) -> Detector:
    """A fresh detector ``name`` with hyper-parameters ``params`` for (C=in_channels, patch_size^dims) inputs."""
    return DETECTORS[name](params, in_channels, patch_size)
