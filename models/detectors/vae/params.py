"""Hyper-parameters of the ``vae`` family (config section ``model``) and its declaration; torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from models.params import Family, check_params, check_value_range
from pipeline.core.validation import added


@dataclass
class VAEParams:
    """VAE hyper-parameters (config section ``model``)."""

    name: str = "vae3d"
    latent_dim: int = 32
    channels: list[int] = field(default_factory=lambda: [8, 16, 32])  # sized for ≥10 cubes/s at K=100 on 2 CPU cores
    strides: list[int] = field(default_factory=lambda: [2, 2, 1])  # product must divide the patch size
    num_res_units: int = 0
    norm: Literal["instance", "batch", "none"] = "instance"  # instance norm hides each image's overall intensity from the layers after it
    decoder: Literal["gaussian", "bernoulli"] = "gaussian"
    sigma: float = 0.7071067811865476  # Gaussian decoder σ (seeds: 1/√2); with learn_sigma its initial value
    learn_sigma: bool = False  # σ is a trained parameter (maximum likelihood, "σ-VAE", Rybkin et al. 2021)
    beta: float = 1.0  # KL weight in the training loss (Lu & Xu 2018: 0.01); scores always use β = 1
    decode_chunk: int = 256  # decoder batch size when scoring K×B samples
    # GMM sizes tried (by BIC on training codes) for the ``latent`` score; [] = off
    latent_gmm: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    # elbo_ic: the value range whose PNG size is subtracted, mapped to 8 bits (z-scored data: e.g. [-3, 3])
    value_range: list[float] = added([0.0, 1.0], "2026-12-04")

    @classmethod
    def tiny(cls) -> "VAEParams":
        """The smallest useful instance, for the contract tests (8-voxel patches, a few seconds for every test)."""
        return cls(latent_dim=4, channels=[4, 8], strides=[2, 2], latent_gmm=[1, 2])

    def check(self, cfg) -> list[str]:
        errs = check_params(self, cfg)
        if self.sigma <= 0:
            errs.append("model.sigma: must be > 0")
        if any(k < 1 for k in self.latent_gmm):
            errs.append("model.latent_gmm: component counts must be ≥ 1")
        # the [0, 1] default on z-scored data only degrades elbo_ic, an extra score: not an error
        return errs + check_value_range(self.value_range, "the elbo_ic score's PNG size", cfg, zscore_default_is_error=False)


FAMILY = Family("vae", VAEParams, ("elbo", "iwae", "recon", "kl", "latent", "elbo_ic"))
