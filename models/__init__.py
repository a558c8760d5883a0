"""Generative anomaly detectors built from MONAI blocks, their registry, training and scores.

Importing the package registers the built-in models in :data:`models.registry.MODELS`.
"""

from models import registry  # noqa: F401
from models import alphagan, baselines, joint, vae, wgan  # noqa: F401  (each registers its models)
