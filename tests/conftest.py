"""Shared test helpers: repository paths, the shared real data location, a CLI runner, small detectors and configs.

Test modules anywhere under ``tests/`` import them with ``from conftest import ...`` (``tests/`` is on
``sys.path``: ``pythonpath`` in pyproject.toml)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CT = ROOT / "sample_data" / "ct"
SHARED_DATA = Path(os.environ.get("MEDANOMALY_SHARED_DATA", ROOT.parent / "shared" / "data"))
LIDC_SERIES = SHARED_DATA / "lidc_ct" / "LIDC-IDRI-0063"
LIDC_NODULES = SHARED_DATA / "lidc_ct" / "nodules.csv"

needs_shared = pytest.mark.skipif(not LIDC_SERIES.is_dir(), reason=f"real LIDC series not found at {LIDC_SERIES} (../shared/data is absent)")


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``pipeline`` as a user would (a fresh process), capturing output."""
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout)


def check_score_output(out, names, x) -> None:
    """A detector's ScoreOutput: exactly ``names``, one finite value per sample, a finite residual shaped like x."""
    import torch

    from models.detector import ScoreOutput

    assert isinstance(out, ScoreOutput) and set(out.scores) == set(names)
    for name in names:
        assert out.scores[name].shape == (x.shape[0],), name
        assert torch.isfinite(out.scores[name]).all(), name
    assert out.residual.shape == x.shape and torch.isfinite(out.residual).all()


@pytest.fixture
def one_thread():
    """Tiny nets gain nothing from 2 threads, and one thread avoids OpenMP spin-waits when the
    machine is shared; restored afterwards for the other tests."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rand_input(*shape, seed: int = 0):
    import torch

    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def gen():
    import torch

    return torch.Generator().manual_seed(0)


def tiny_params(cls, latent_dim: int = 8, **kw):
    """Small parameters of a network detector class (``latent_dim``, channels 4-8, strides 2-2), named by its registry name."""
    return cls.Params(name=cls.registry_name, latent_dim=latent_dim, channels=[4, 8], strides=[2, 2], **kw)


def make_model(cls, in_channels: int, seed: int = 0, latent_dim: int = 8, patch: int = 28, **kw):
    """A detector of class ``cls`` with :func:`tiny_params`, seeded, in eval mode, for ``patch``-sized inputs."""
    import torch

    torch.manual_seed(seed)
    return cls(tiny_params(cls, latent_dim, **kw), in_channels, patch).eval()


def tiny_gan(name: str, side: int = 28, **kw):
    """A GAN-family detector ``name`` with :func:`tiny_params` (seeded, train mode), for fast tests."""
    import torch

    from models.zoo import DETECTORS

    torch.manual_seed(0)
    return DETECTORS[name](tiny_params(DETECTORS[name], **kw), 1, side)


def load_config(path, overrides=None):
    """:func:`pipeline.core.config.load_config` with the built-in model catalog (as the CLI hands it in)."""
    from models.catalog import MODELS
    from pipeline.core import config

    return config.load_config(path, overrides, models=MODELS)


def validate(raw, base_dir, source=None):
    """:func:`pipeline.core.config.validate` with the built-in model catalog."""
    from models.catalog import MODELS
    from pipeline.core import config

    return config.validate(raw, base_dir, source, models=MODELS)


def ball(shape, centre, radius):
    """Voxels (zyx) of ``shape`` within ``radius`` of ``centre``."""
    z, y, x = np.indices(shape)
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius ** 2


def chest_phantom():
    """A 48×80×110 chest phantom at 1 mm (lung-region and candidate tests): outside air, a tissue body, two
    air lungs (−850 HU) 30 mm apart; in the right lung a vessel (a tissue ball the air surrounds) and on its
    lateral wall (x = 12) a juxtapleural nodule, a 6 mm radius tissue ball centred 3 mm inside the lung: the air mask has a dent where it sits."""
    shape = (48, 80, 110)
    vol = np.full(shape, -1000.0, np.float32)
    vol[:, 8:72, 4:106] = 40.0  # body
    vol[6:42, 18:62, 12:40] = -850.0  # right lung
    vol[6:42, 18:62, 70:98] = -850.0  # left lung
    vessel = (24, 40, 28)
    vol[ball(shape, vessel, 3)] = 40.0
    nodule = (24, 30, 15)
    vol[ball(shape, nodule, 6)] = 40.0
    return vol, vessel, nodule
