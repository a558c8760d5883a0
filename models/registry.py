"""The registry of detector classes by model name (``vae3d``, ...): :data:`DETECTORS`, filled by the decorators here.

A family's ``model.py`` decorates its :class:`models.detector.Detector` subclass with
``@register_2d_3d("<family>")``; :mod:`models.zoo` imports every family's ``model.py``, so
``models.zoo.DETECTORS`` is the complete registry. (The torch-free :data:`models.catalog.MODELS`
holds the specs of the same names: parameters and score names, no classes.)
"""

from __future__ import annotations

from models.catalog import FAMILIES
from models.detector import Detector

DETECTORS: dict[str, type[Detector]] = {}


def register(name: str):
    """Class decorator: make a detector available as ``model: {name: <name>}`` in configs."""

    def deco(cls: type[Detector]) -> type[Detector]:
        if name in DETECTORS:
            raise ValueError(f"model {name!r} registered twice")
        DETECTORS[name] = cls
        cls.registry_name = name
        return cls

    return deco


def register_2d_3d(base: str):
    """Register a dimension-generic detector class as ``<base>2d`` and ``<base>3d``.

    Its ``Params`` and ``score_names`` are those of the family ``base`` in the torch-free
    :mod:`models.catalog` (the family's ``params.py``), the one place that declares them.
    """
    family = FAMILIES[base]

    def deco(cls: type[Detector]) -> type[Detector]:
        cls.Params, cls.score_names = family.params, family.scores
        for dims in (2, 3):
            sub = type(f"{cls.__name__}{dims}D", (cls,), {"spatial_dims": dims, "__doc__": f"{cls.__doc__} ({dims}D)"})
            register(f"{base}{dims}d")(sub)
        return cls

    return deco
