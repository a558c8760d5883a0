"""Anomaly detectors built from MONAI blocks: the catalog, the registry, training, scoring and inference.

The package itself imports nothing: :mod:`models.catalog` (names, parameters, score names) is
torch-free, :mod:`models.zoo` imports every detector family (torch, MONAI).
"""
