"""The detector families, one folder each: ``models/detectors/<family>/``.

A folder holds ``params.py`` (torch-free: the family's parameter dataclass with a ``tiny()``
classmethod, and ``FAMILY = Family(...)``) and ``model.py`` (the :class:`models.detector.Detector`
subclass, registered with ``@register_2d_3d("<family>")``). Being here is the registration:
:mod:`models.catalog` finds the params, :mod:`models.zoo` imports the models. See
``docs/ADDING_A_DETECTOR.md``.
"""
