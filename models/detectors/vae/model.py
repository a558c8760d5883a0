"""VAE detector (Kingma & Welling 2014, https://arxiv.org/abs/1312.6114) on MONAI's ``VarAutoEncoder``, in 2D and 3D.

As used for anomaly detection by Santos Buitrago et al. 2018 (ELBO on MNIST and 3D nodule cubes) and
Lu & Xu 2018 (ELBO, KL, reconstruction and IWAE scores on skin images, https://arxiv.org/abs/1807.01349).

Likelihood terms are in nats per sample and include the normalising constants, so ELBO and IWAE
are real bounds on log p(x) and can be compared:

- Gaussian decoder: ``−log p(x|z) = ‖x − μ_θ(z)‖² / (2σ²) + (N/2)·log(2πσ²)``; Santos Buitrago et al. use
  σ = 1/√2, which makes the first term the plain squared error.
- Bernoulli decoder: ``−log p(x|z) = BCE(logits_θ(z), x)`` summed over voxels (x in [0, 1]).

Scores (higher = more anomalous), with K samples z_k ~ q(z|x):
``recon`` = mean_k −log p(x|z_k); ``kl`` = KL(q‖p) (analytic); ``elbo`` = recon + kl (= −ELBO);
``iwae`` = −log (1/K) Σ_k p(x|z_k) p(z_k) / q(z_k|x); ``latent`` = −log p_GMM(μ(x)), the density
of the code under a Gaussian mixture fitted to the training codes (:mod:`models.detectors.vae.latent_density`);
``elbo_ic`` = elbo/ln 2 − L(x), the ELBO in bits minus the input's PNG length (:mod:`models.nets.complexity`).

MONAI pitfall: in eval mode ``VarAutoEncoder.forward`` uses z = μ + σ (MONAI #8413); we call
``encode_forward``/``decode_forward`` and sample ourselves. The encoder runs once per sample
and the decoder over a K×B batch (in chunks, to bound memory).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from monai.networks.nets import VarAutoEncoder

from models.detector import Detector, ScoreOutput
from models.detectors.vae.latent_density import LatentGMM
from models.detectors.vae.params import VAEParams
from models.nets.complexity import png_bits
from models.registry import DETECTORS, register_2d_3d

LOG_2PI = math.log(2 * math.pi)


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """−log N(x; mean, σ²I) summed over all but the batch axis (nats); σ a float or a scalar tensor."""
    n = x[0].numel()
    sq = (x - mean).pow(2).flatten(1).sum(1)
    log_sigma = sigma.log() if isinstance(sigma, torch.Tensor) else math.log(sigma)
    return sq / (2 * sigma**2) + 0.5 * n * (LOG_2PI + 2 * log_sigma)


def bernoulli_nll(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """−log Bernoulli(x; sigmoid(logits)) summed over all but the batch axis (x may be soft)."""
    return F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").flatten(1).sum(1)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag e^logvar) ‖ N(0, I)) per sample."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; μ, diag e^logvar), summed over the last axis."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)


def mc_scores(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, nll: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
              k: int, generator: torch.Generator, chunk: int = 256) -> dict[str, torch.Tensor]:
    """ELBO, IWAE, reconstruction and KL scores from K posterior samples.

    ``nll(x_rep, z)`` returns −log p(x|z) for a flat batch of latent codes. The noise ε (K, L)
    is shared by every sample of the batch (common random numbers), so a sample's score does not
    depend on which batch it is scored in.
    """
    b, latent = mu.shape
    eps = torch.randn(k, latent, generator=generator, device="cpu").to(mu.device, mu.dtype)
    std = (0.5 * logvar).exp()
    z = mu[None] + std[None] * eps[:, None, :]  # (K, B, L)
    zf = z.reshape(k * b, latent)
    xf = x[None].expand(k, *x.shape).reshape(k * b, *x.shape[1:])
    rec = torch.cat([nll(xf[i : i + chunk], zf[i : i + chunk]) for i in range(0, k * b, chunk)]).view(k, b)
    kl = kl_standard_normal(mu, logvar)
    log_w = -rec + log_normal(z, torch.zeros_like(z), torch.zeros_like(z)) - log_normal(z, mu[None], logvar[None])
    iwae = -(torch.logsumexp(log_w, 0) - math.log(k))
    recon = rec.mean(0)
    return {"elbo": recon + kl, "iwae": iwae, "recon": recon, "kl": kl}


@register_2d_3d("vae")
class VAE(Detector):
    """VAE on MONAI's VarAutoEncoder"""


    def __init__(self, params: VAEParams, in_channels: int, patch_size: int) -> None:
        super().__init__(params, in_channels, patch_size)
        self.net = VarAutoEncoder(
            spatial_dims=self.spatial_dims,
            in_shape=(in_channels, *([patch_size] * self.spatial_dims)),
            out_channels=in_channels,
            latent_size=params.latent_dim,
            channels=tuple(params.channels),
            strides=tuple(params.strides),
            num_res_units=params.num_res_units,
            norm=None if params.norm == "none" else params.norm.upper(),
            use_sigmoid=False,
        )
        # log σ of the Gaussian decoder: a parameter when learnt, else a constant buffer
        log_sigma = torch.tensor(math.log(params.sigma))
        if params.learn_sigma:
            self.log_sigma = torch.nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)
        self.latent_density = LatentGMM(params.latent_dim, max(params.latent_gmm, default=1))

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder mean in data range (sigmoid of the network output)."""
        return torch.sigmoid(self.net.decode_forward(z, use_sigmoid=False))

    def generator(self):
        return self.decode_mean

    def encoder(self):
        return lambda x: self.net.encode_forward(x)[0]  # the posterior mean

    def nll(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        out = self.net.decode_forward(z, use_sigmoid=False)
        if self.params.decoder == "bernoulli":
            return bernoulli_nll(x, out)
        return gaussian_nll(x, torch.sigmoid(out), self.log_sigma.clamp(min=math.log(1e-3)).exp())

    def loss_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Single-sample reconstruction NLL and analytic KL per sample (training objective)."""
        mu, logvar = self.net.encode_forward(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.nll(x, z), kl_standard_normal(mu, logvar)

    def loss(self, x):
        rec, kl = self.loss_terms(x)
        return (rec + self.params.beta * kl).mean(), {"recon": rec.mean(), "kl": kl.mean()}

    def validation_loss(self, x):
        rec, kl = self.loss_terms(x)
        return rec + self.params.beta * kl

    @torch.inference_mode()
    def fit_after_training(self, train_x):
        if not self.params.latent_gmm:
            return {}
        was = self.training
        self.eval()
        codes = torch.cat([self.net.encode_forward(train_x[i : i + 256])[0] for i in range(0, len(train_x), 256)])
        self.train(was)
        return self.latent_density.fit(codes.cpu().numpy(), self.params.latent_gmm, seed=0)

    @torch.inference_mode()
    def score(self, x, mc_samples, generator):
        mu, logvar = self.net.encode_forward(x)
        scores = mc_scores(x, mu, logvar, self.nll, mc_samples, generator, self.params.decode_chunk)
        scores["latent"] = self.latent_density.nll(mu)
        scores["elbo_ic"] = scores["elbo"] / math.log(2) - png_bits(x, *self.params.value_range)  # bits; Serrà et al.'s input-complexity correction
        return ScoreOutput.of(scores, x, self.decode_mean(mu))


VAE2D, VAE3D = DETECTORS["vae2d"], DETECTORS["vae3d"]
