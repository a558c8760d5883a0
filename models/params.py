"""Torch-free parts shared by the detector families' parameter classes (``models/detectors/*/params.py``).

- :class:`Family`: what a family's ``params.py`` declares as ``FAMILY``: its name (the folder's
  name), its parameter dataclass, its score names (primary first), and whether the evaluate stage
  writes GAN diagnostics for it;
- the config checks shared by the network-based detectors (:func:`check_params`, :func:`check_strides`,
  :func:`check_arch`);
- the parameter bases of families that share a network: :class:`WGANParams` (anogan, fanogan) and
  :class:`AdversarialAEParams` (bigan, alphagan). Their torch parts are in :mod:`models.nets`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence


@dataclass(frozen=True)
class Family:
    """One detector family, registered as ``<name>2d`` and ``<name>3d`` (see :mod:`models.catalog`)."""

    name: str
    params: type
    scores: tuple[str, ...]
    gan: bool = False  # the evaluate stage writes GAN diagnostics (evaluation.gan_diagnostics): sample grids, latent search, reconstructions


def check_strides(strides: Sequence[int], patch: int, key: str = "model.strides") -> list[str]:
    """Config check: MONAI silently produces a different size when the strides do not divide the patch."""
    size = patch
    for s in strides:
        if size % s:
            return [f"{key}: {list(strides)} do not divide train.patch_size {patch} (MONAI would silently produce a different size)"]
        size //= s
    return []


def check_value_range(value_range: Sequence[float], what: str, cfg, zscore_default_is_error: bool = True) -> list[str]:
    """``model.value_range``, the range a compression size (PNG/JPEG bits, ``what``) maps to 8 bits:
    ``[lo, hi]`` with lo < hi, and (``zscore_default_is_error``, where the size is the score itself)
    not the [0, 1] default on z-scored images (it would clamp them)."""
    if len(value_range) != 2 or not value_range[0] < value_range[1]:
        return ["model.value_range: [lo, hi] with lo < hi (model units)"]
    if zscore_default_is_error and cfg.extract.normalise == "zscore" and list(value_range) == [0.0, 1.0]:
        return [f"model.value_range: z-scored images (extract.normalise: zscore) span about [-3, 3], not [0, 1]; "
                f"{what} would clamp them: set model.value_range, e.g. [-3, 3]"]
    return []


def check_params(p, cfg) -> list[str]:
    """Config checks shared by the network-based detectors (whichever of these fields ``p`` has)."""
    errs = check_strides(p.strides, cfg.train.patch_size)
    if len(p.channels) != len(p.strides):
        errs.append(f"model.strides: {len(p.strides)} values but model.channels has {len(p.channels)}")
    if getattr(p, "latent_dim", 1) < 1:
        errs.append("model.latent_dim: must be ≥ 1")
    if getattr(p, "n_critic", 1) < 1:
        errs.append("model.n_critic: must be ≥ 1")
    if not all(0.0 <= b < 1.0 for b in getattr(p, "betas", ())):
        errs.append("model.betas: each must be in [0, 1)")
    return errs + check_arch(p)


ARCHS = ("monai", "dcgan")  # GAN-family networks (models.nets): MONAI Generator/Critic/Regressor, or DCGAN-style
NORMS = ("batch", "instance", "layer", "none")  # norms of the dcgan networks (g_norm, d_norm, e_norm)


def check_arch(p) -> list[str]:
    """Config checks of the GAN-family network options (``arch``, ``g_norm``, ``d_norm``, ``e_norm``), for whichever ``p`` has."""
    errs = []
    arch = getattr(p, "arch", "monai")
    if arch not in ARCHS:
        errs.append(f"model.arch: {arch!r} is not one of {', '.join(ARCHS)}")
    for key in ("g_norm", "d_norm", "e_norm"):
        value = getattr(p, key, "none")
        if value not in NORMS:
            errs.append(f"model.{key}: {value!r} is not one of {', '.join(NORMS)}")
    per_sample = [k for k in ("d_norm", "e_norm") if getattr(p, k, "none") == "batch"]
    if per_sample:
        errs.append(f"model.{'/'.join(per_sample)}: batch norm would couple the samples of a batch (the gradient penalty and the scores are "
                    "per sample); use instance, layer or none")
    return errs


@dataclass
class WGANParams:
    """WGAN-GP hyper-parameters shared by the AnoGAN and f-AnoGAN detectors."""

    name: str = "anogan3d"
    latent_dim: int = 64
    channels: list[int] = field(default_factory=lambda: [8, 16, 32])  # G and D; sized for the CPU speed targets
    strides: list[int] = field(default_factory=lambda: [2, 2, 1])
    lambda_gp: float = 10.0
    n_critic: int = 5
    betas: tuple[float, float] = (0.5, 0.9)
    latent_prior: Literal["normal", "uniform"] = "normal"  # Santos Buitrago et al. used uniform z, Berg et al. normal
    arch: Literal["monai", "dcgan"] = "monai"  # networks (models.nets): MONAI Generator/Critic, or DCGAN-style with a global critic
    g_norm: Literal["batch", "instance", "layer", "none"] = "batch"  # G's norm (dcgan arch only)
    d_norm: Literal["instance", "layer", "none"] = "none"  # the critic's (and f-AnoGAN encoder's) norm, dcgan arch only; no batch norm
    selection: Literal["nn_bank", "wasserstein"] = "nn_bank"  # validation loss for epoch selection (see WGANGP.validation_loss)
    val_bank: int = 256  # samples in the fixed bank of the nn_bank validation loss (3D: 32 keeps validation cheaper than an epoch)

    def check(self, cfg) -> list[str]:
        errs = check_params(self, cfg)
        if self.val_bank < 1:
            errs.append("model.val_bank: must be ≥ 1")
        return errs


@dataclass
class AdversarialAEParams:
    """Shared hyper-parameters of the BiGAN and α-GAN detectors (config section ``model``)."""

    name: str = "bigan3d"
    latent_dim: int = 128
    channels: list[int] = field(default_factory=lambda: [16, 32, 64])  # G, D and E widths
    strides: list[int] = field(default_factory=lambda: [2, 2, 1])  # product must divide the patch size
    betas: tuple[float, float] = (0.5, 0.999)  # Adam betas for all networks
    arch: Literal["monai", "dcgan"] = "monai"  # networks (models.nets): MONAI Generator/Critic/Regressor or DCGAN-style
    g_norm: Literal["batch", "instance", "layer", "none"] = "batch"  # dcgan arch only
    d_norm: Literal["instance", "layer", "none"] = "none"  # image discriminator norm (α-GAN), dcgan arch only
    e_norm: Literal["instance", "layer", "none"] = "none"  # encoder norm, dcgan arch only

    def check(self, cfg) -> list[str]:
        return check_params(self, cfg)
