"""The model catalog: every detector's name, hyper-parameters (config section ``model``) and score names.

Torch-free on purpose: ``pipeline validate`` checks a config's ``model`` section against these
dataclasses without importing torch or MONAI (the CLI hands :data:`MODELS` to
:func:`pipeline.core.config.load_config`). The networks themselves live in the family modules
(:mod:`models.vae`, :mod:`models.wgan`, ...), which register their implementation for a family
name with :func:`models.registry.register_2d_3d`; their ``Params`` and ``score_names`` come from here.

Adding a model: its parameter dataclass and one :func:`family` line here, its family module, and
an import in :mod:`models.zoo`; the contract tests then cover it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

from pipeline.core.validation import added


@dataclass(frozen=True)
class ModelSpec:
    """One registered model: ``<family><dims>d`` with its parameter class and score names (primary first)."""

    name: str
    family: str
    spatial_dims: int
    params: type
    scores: tuple[str, ...]


MODELS: dict[str, ModelSpec] = {}
FAMILIES: dict[str, tuple[type, tuple[str, ...]]] = {}


def family(name: str, params: type, scores: Sequence[str]) -> None:
    """Register a dimension-generic family as ``<name>2d`` and ``<name>3d``."""
    FAMILIES[name] = (params, tuple(scores))
    for dims in (2, 3):
        MODELS[f"{name}{dims}d"] = ModelSpec(f"{name}{dims}d", name, dims, params, tuple(scores))


def check_strides(strides: Sequence[int], patch: int, key: str = "model.strides") -> list[str]:
    """Config check: MONAI silently produces a different size when the strides do not divide the patch."""
    size = patch
    for s in strides:
        if size % s:
            return [f"{key}: {list(strides)} do not divide train.patch_size {patch} (MONAI would silently produce a different size)"]
        size //= s
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

    def check(self, cfg) -> list[str]:
        errs = check_params(self, cfg)
        if self.sigma <= 0:
            errs.append("model.sigma: must be > 0")
        if any(k < 1 for k in self.latent_gmm):
            errs.append("model.latent_gmm: component counts must be ≥ 1")
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
class AnoGANParams(WGANParams):
    search_steps: int = 100
    search_lambda: float = 0.5  # weight of the feature term
    search_optimizer: Literal["adam", "sgd"] = "adam"
    search_lr: float = 0.05
    restarts: int = 1
    search_normalise: bool = False  # divide each term of L(z) by its typical size on the normal training images (fitted after training)
    search_project: bool = True  # keep z in the prior's support after every step (uniform: clamp to [-1, 1]; normal: cap ‖z‖ at the 99.9 % radius)

    def check(self, cfg) -> list[str]:
        errs = super().check(cfg)
        if self.search_steps < 0 or self.restarts < 1:
            errs.append("model.search_steps / model.restarts: need search_steps ≥ 0 and restarts ≥ 1")
        if self.search_lr <= 0:
            errs.append("model.search_lr: must be > 0")
        if not 0.0 <= self.search_lambda <= 1.0:
            errs.append("model.search_lambda: must be in [0, 1]")
        return errs


@dataclass
class FAnoGANParams(WGANParams):
    name: str = "fanogan3d"
    kappa: float = 1.0
    encoder_epochs_fraction: float = 0.5


@dataclass
class JointParams:
    """Jointly trained encoder WGAN-GP hyper-parameters (config section ``model``)."""

    name: str = "joint3d"
    latent_dim: int = 128  # N_z (study: 512 on 2D images)
    channels: list[int] = field(default_factory=lambda: [16, 32, 64])  # G, D and E widths
    strides: list[int] = field(default_factory=lambda: [2, 2, 1])  # product must divide the patch size
    z_norm: Literal["unit", "none"] = "unit"  # unit: G normalises its input code to unit length (study/pGAN)
    lambda_gp: float = 10.0
    n_critic: int = 5  # critic steps per generator/encoder step
    encoder_weight: float = 1.0  # μ: weight of ‖G(z) − G(E(G(z)))‖₁ in the G/E step
    score_lambda: float = 0.05  # λ in a = λ·L_n + (1−λ)·L_o
    betas: tuple[float, float] = (0.5, 0.9)  # Adam betas for all networks (WGAN-GP: (0, 0.9) or (0.5, 0.9))
    arch: Literal["monai", "dcgan"] = "monai"  # networks (models.nets): MONAI Generator/Critic/Regressor or DCGAN-style
    g_norm: Literal["batch", "instance", "layer", "none"] = "batch"  # dcgan arch only
    d_norm: Literal["instance", "layer", "none"] = "none"  # critic norm, dcgan arch only
    e_norm: Literal["instance", "layer", "none"] = "none"  # encoder norm, dcgan arch only (the "j4" design: layer)
    e_init_scale: float = 1.0  # multiplies the initial weights and bias of E's output layer (a diagnostic knob, see models.joint)

    def check(self, cfg) -> list[str]:
        errs = check_params(self, cfg)
        if not 0.0 <= self.score_lambda <= 1.0:
            errs.append("model.score_lambda: must be in [0, 1]")
        if not self.e_init_scale > 0:
            errs.append("model.e_init_scale: must be > 0")
        if self.lambda_gp < 0 or self.encoder_weight < 0:
            errs.append("model.lambda_gp / model.encoder_weight: must be ≥ 0")
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


@dataclass
class BiGANParams(AdversarialAEParams):
    """BiGAN/ALI hyper-parameters."""

    name: str = "bigan3d"
    disc_features: int = 128  # width of the joint discriminator's image/code branches and hidden layer

    def check(self, cfg) -> list[str]:
        errs = super().check(cfg)
        if self.disc_features < 1:
            errs.append("model.disc_features: must be ≥ 1")
        return errs


@dataclass
class AlphaGANParams(AdversarialAEParams):
    """α-GAN hyper-parameters."""

    name: str = "alphagan3d"
    rec_weight: float = 10.0  # weight of the voxel-mean L1 reconstruction loss (the X-ray GAN study gives none)
    code_hidden: int = 256  # width of the code discriminator's two hidden layers

    def check(self, cfg) -> list[str]:
        errs = super().check(cfg)
        if self.rec_weight < 0:
            errs.append("model.rec_weight: must be ≥ 0")
        if self.code_hidden < 1:
            errs.append("model.code_hidden: must be ≥ 1")
        return errs


@dataclass
class PCAParams:
    """PCA baseline hyper-parameters (config section ``model``)."""

    name: str = "pca3d"
    n_components: int = 32  # k principal components kept
    whiten: bool = False  # only changes ``pca_latent`` (→ Hotelling T²); the reconstruction is the same

    def check(self, cfg) -> list[str]:
        if self.n_components < 1:
            return ["model.n_components: must be ≥ 1"]
        return []


@dataclass
class IntensityParams:
    """Intensity-statistic baseline hyper-parameters (config section ``model``)."""

    name: str = "intensity3d"
    statistic: Literal["mean", "std", "max", "high_fraction", "complexity"] = "mean"  # complexity: PNG bits (models/complexity.py)
    threshold: float = 0.5  # high_fraction: voxels above this value (model range; 0.5 ≈ −300 HU in [−1000, 400])
    distance: Literal["two_sided", "upper", "lower"] = "two_sided"  # |z|, z (brighter = anomalous) or −z
    min_std: float = 1e-6  # floor of the training standard deviation (constant training statistic)

    def check(self, cfg) -> list[str]:
        errs = []
        if not self.min_std > 0:
            errs.append("model.min_std: must be > 0")
        if self.statistic == "high_fraction" and cfg.extract.normalise == "window" and not 0 <= self.threshold <= 1:
            errs.append(f"model.threshold: {self.threshold} is outside the model range [0, 1] of window-normalised data")
        return errs



@dataclass
class SizeParams:
    """Size baseline hyper-parameters (config section ``model``)."""

    name: str = "size3d"
    threshold: float = 0.45  # model range; 0.45 ≈ −370 HU in [−1000, 400] HU (lung/soft-tissue midpoint)
    centre_radius: int = 3  # the ball's centre lies within this many voxels (Chebyshev) of the patch centre

    def check(self, cfg) -> list[str]:
        errs = []
        if self.centre_radius < 0:
            errs.append("model.centre_radius: must be ≥ 0")
        if 2 * self.centre_radius + 1 > cfg.train.patch_size:
            errs.append("model.centre_radius: the central region is larger than train.patch_size")
        return errs


@dataclass
class KNNParams:
    """k-NN-on-PCA baseline hyper-parameters (config section ``model``)."""

    name: str = "knn3d"
    n_components: int = 32  # PCA components (capped at N − 1 training patches)
    k: int = 5  # neighbours averaged (capped at N)
    whiten: bool = False  # divide each PCA coordinate by its standard deviation

    def check(self, cfg) -> list[str]:
        errs = []
        if self.n_components < 1:
            errs.append("model.n_components: must be ≥ 1")
        if self.k < 1:
            errs.append("model.k: must be ≥ 1")
        return errs


@dataclass
class SynthParams:
    """Synthetic-anomaly detector hyper-parameters (config section ``model``)."""

    name: str = "synth3d"
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])  # MONAI UNet levels (the last is the bottom layer)
    strides: list[int] = field(default_factory=lambda: [2, 2, 1])  # len(channels) − 1 values; 28 → 14 → 7 → 7
    num_res_units: int = 2
    norm: Literal["instance", "batch"] = "instance"
    loss: Literal["bce", "mse"] = "bce"
    radius: list[float] = field(default_factory=lambda: [0.08, 0.35])
    blob: float = 0.3
    edge: list[float] = field(default_factory=lambda: [0.0, 0.5])
    alpha: list[float] = field(default_factory=lambda: [0.0, 1.0])
    clean_fraction: float = 0.25
    centre_margin: float = 0.15
    top_fractions: list[float] = field(default_factory=lambda: [0.01, 0.1])  # synth_top1, synth_top10
    knn_k: int = 5
    val_seed: int = 12345  # the fixed synthetic anomalies of the validation loss
    # fraction of each training batch left out of the step, by the highest loss on unaltered voxels (robustness to contaminated training data)
    trim: float = added(0.0, "2026-11-30")

    def check(self, cfg) -> list[str]:
        errs = []
        if len(self.strides) != len(self.channels) - 1:
            errs.append(f"model.strides: needs len(model.channels) − 1 = {len(self.channels) - 1} values (MONAI UNet)")
        else:
            errs += check_strides(self.strides, cfg.train.patch_size)
        if not (len(self.radius) == 2 and 0 < self.radius[0] <= self.radius[1]):
            errs.append("model.radius: [min, max] with 0 < min ≤ max (fractions of the patch)")
        if not (len(self.edge) == 2 and 0 <= self.edge[0] <= self.edge[1] <= 1):
            errs.append("model.edge: [min, max] within [0, 1]")
        if not (len(self.alpha) == 2 and 0 <= self.alpha[0] <= self.alpha[1] <= 1):
            errs.append("model.alpha: [min, max] within [0, 1]")
        if not 0 <= self.blob < 1:
            errs.append("model.blob: must be in [0, 1)")
        if not 0 <= self.clean_fraction < 1:
            errs.append("model.clean_fraction: must be in [0, 1)")
        if not 0 <= self.centre_margin < 0.5:
            errs.append("model.centre_margin: must be in [0, 0.5)")
        if len(self.top_fractions) != 2 or not all(0 < f <= 1 for f in self.top_fractions):
            errs.append("model.top_fractions: two fractions in (0, 1]")
        if not 0 <= self.trim < 0.5:
            errs.append("model.trim: fraction of each batch left out, in [0, 0.5)")
        return errs



@dataclass
class GeomParams:
    """Transformation-prediction hyper-parameters (config section ``model``)."""

    name: str = "geom3d"
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    strides: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    num_res_units: int = 2
    norm: Literal["batch", "instance"] = "batch"
    dropout: float = 0.0
    transforms_per_image: int = 0  # 0 = all T transforms of every training image per step
    knn_k: int = 5
    feature_views: Literal["identity", "all"] = "identity"  # density features: flattened trunk of x, or trunk GAP of all T views concatenated

    def check(self, cfg) -> list[str]:
        errs = []
        if len(self.channels) != len(self.strides):
            errs.append(f"model.strides: {len(self.strides)} values but model.channels has {len(self.channels)}")
        if self.transforms_per_image < 0:
            errs.append("model.transforms_per_image: must be ≥ 0")
        if cfg.train.flips:
            errs.append("train.flips: must be false for geom (random flips make the transformation classes ambiguous)")
        return errs


GAN_FAMILIES = ("anogan", "fanogan", "joint", "bigan", "alphagan")  # the evaluate stage writes GAN diagnostics for these (evaluation.gan_diagnostics)
STATISTICS = ("mean", "std", "max", "high_fraction", "complexity")

family("vae", VAEParams, ("elbo", "iwae", "recon", "kl", "latent", "elbo_ic"))
family("anogan", AnoGANParams, ("anogan", "residual", "feature"))
family("fanogan", FAnoGANParams, ("fanogan", "residual", "feature"))
family("joint", JointParams, ("joint", "joint_ln", "joint_lo"))
family("bigan", BiGANParams, ("l1", "l2", "enc_fm", "disc_fm", "disc"))
family("alphagan", AlphaGANParams, ("l1", "l2", "enc_fm", "disc_fm", "disc"))
family("pca", PCAParams, ("pca_recon", "pca_latent"))
family("intensity", IntensityParams, ("intensity", "intensity_raw"))
family("size", SizeParams, ("size",))
family("knn", KNNParams, ("knn", "knn_maha"))
family("synth", SynthParams, ("synth_mean", "synth_top1", "synth_top10", "synth_max", "feat_knn", "feat_maha"))
family("geom", GeomParams, ("geom", "geom_err", "feat_knn", "feat_maha"))
