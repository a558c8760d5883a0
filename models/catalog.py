"""The model catalog: every detector's name, hyper-parameters (config section ``model``) and score names.

Torch-free on purpose: ``pipeline validate`` checks a config's ``model`` section against these
dataclasses without importing torch or MONAI (the CLI hands :data:`MODELS` to
:func:`pipeline.core.config.load_config`).

A family registers itself by being a folder of :mod:`models.detectors`: this module imports the
``params.py`` of every sub-package there and reads its ``FAMILY`` (:class:`models.params.Family`).
The networks live beside it in ``model.py``, which :mod:`models.zoo` imports when torch is needed.
There is no list to edit: ``docs/ADDING_A_DETECTOR.md`` says what a new folder holds.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass

from models import detectors
from models.params import Family


@dataclass(frozen=True)
class ModelSpec:
    """One registered model: ``<family><dims>d`` with its parameter class and score names (primary first)."""

    name: str
    family: str
    spatial_dims: int
    params: type
    scores: tuple[str, ...]


def discover() -> dict[str, Family]:
    """Every family of :mod:`models.detectors`, by name: the ``FAMILY`` of each sub-package's ``params.py``."""
    found: dict[str, Family] = {}
    for info in sorted(pkgutil.iter_modules(detectors.__path__), key=lambda i: i.name):
        if not info.ispkg:
            continue
        fam = importlib.import_module(f"{detectors.__name__}.{info.name}.params").FAMILY
        if fam.name != info.name:
            raise ValueError(f"models/detectors/{info.name}/params.py declares family {fam.name!r}: a family is named by its folder")
        found[fam.name] = fam
    return found


FAMILIES: dict[str, Family] = discover()
MODELS: dict[str, ModelSpec] = {f"{f.name}{d}d": ModelSpec(f"{f.name}{d}d", f.name, d, f.params, tuple(f.scores))
                                for f in FAMILIES.values() for d in (2, 3)}
GAN_FAMILIES = tuple(f.name for f in FAMILIES.values() if f.gan)  # the evaluate stage writes GAN diagnostics for these (evaluation.gan_diagnostics)
