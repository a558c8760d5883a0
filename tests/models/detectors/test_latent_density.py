"""The ``latent`` score: a Gaussian mixture over training codes, chosen by BIC, evaluated in torch."""

from __future__ import annotations

import math

import numpy as np
import torch
from conftest import rand_input
from sklearn.mixture import GaussianMixture

from models.detectors.vae.latent_density import LatentGMM
from models.detectors.vae.model import VAE2D
from models.detectors.vae.params import VAEParams


def _two_clusters(n: int = 400, dim: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1, (n // 2, dim))
    b = rng.normal(0, 0.5, (n // 2, dim)) + 8
    return np.concatenate([a, b])


def test_bic_picks_two_components_for_two_clusters():
    gmm = LatentGMM(3, max_components=8)
    terms = gmm.fit(_two_clusters(), [1, 2, 4, 8])
    assert terms["latent_components"] == 2 and int(gmm.n_components) == 2


def test_nll_equals_sklearn_score_samples():
    codes = _two_clusters(seed=1)
    gmm = LatentGMM(3, max_components=4)
    gmm.fit(codes, [2])
    ref = GaussianMixture(2, covariance_type="full", reg_covar=1e-4, random_state=0).fit(codes)
    query = np.random.default_rng(2).normal(3, 4, (50, 3))
    ours = gmm.nll(torch.as_tensor(query, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(ours, -ref.score_samples(query), rtol=1e-4, atol=1e-3)
    # far from every training code → much less likely than the cluster centres
    far = gmm.nll(torch.tensor([[30.0, -30.0, 30.0]]))
    near = gmm.nll(torch.tensor([[0.0, 0.0, 0.0], [8.0, 8.0, 8.0]]))
    assert (far > near.max() + 50).all()


def test_unfitted_mixture_gives_nan_not_a_number_that_looks_real():
    assert torch.isnan(LatentGMM(4, 2).nll(torch.zeros(3, 4))).all()


def test_vae_latent_score_after_fit_and_through_state_dict():
    torch.manual_seed(0)
    params = VAEParams(name="vae2d", latent_dim=4, channels=[4, 8], strides=[2, 2], latent_gmm=[1, 2, 3])
    model = VAE2D(params, 1, 16).eval()
    train = rand_input(40, 1, 16, 16, seed=3)
    terms = model.fit_after_training(train)
    assert terms["latent_components"] in (1, 2, 3) and math.isfinite(terms["latent_train_nll"])
    x = rand_input(5, 1, 16, 16, seed=4)
    out = model.score(x, 4, torch.Generator().manual_seed(0)).scores
    with torch.no_grad():
        mu, _ = model.net.encode_forward(x)
    torch.testing.assert_close(out["latent"], model.latent_density.nll(mu))
    assert torch.isfinite(out["latent"]).all()
    clone = VAE2D(params, 1, 16).eval()
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(clone.score(x, 4, torch.Generator().manual_seed(0)).scores["latent"], out["latent"])


def test_png_bits_orders_by_complexity_and_handles_2d_3d_rgb():
    from models.nets.complexity import png_bits

    flat = torch.full((1, 1, 28, 28), 0.5)
    noise = rand_input(1, 1, 28, 28, seed=5)
    bits = png_bits(torch.cat([flat, noise]))
    assert bits[0] < 8 * 200 and bits[1] > 8 * 28 * 28 * 0.8  # a constant image is tiny; uniform noise barely compresses
    assert png_bits(rand_input(2, 3, 16, 16)).shape == (2,) and png_bits(rand_input(2, 1, 8, 8, 8)).shape == (2,)
    x = rand_input(3, 1, 16, 16, seed=6)
    model = VAE2D(VAEParams(name="vae2d", latent_dim=4, channels=[4, 8], strides=[2, 2]), 1, 16).eval()
    sc = model.score(x, 3, torch.Generator().manual_seed(0)).scores
    torch.testing.assert_close(sc["elbo_ic"], sc["elbo"] / math.log(2) - png_bits(x))
