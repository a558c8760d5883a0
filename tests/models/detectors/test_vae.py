"""VAE detectors (2D/3D) and the Monte-Carlo ELBO/IWAE scores, incl. a linear-Gaussian exact check."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from conftest import make_model, rand_input

from models.detector import ScoreOutput
from models.detectors.vae.model import VAE2D, VAE3D, bernoulli_nll, gaussian_nll, kl_standard_normal, log_normal, mc_scores

torch.set_num_threads(2)

PATCH = 28
SCORES = ("elbo", "iwae", "recon", "kl")


LATENT = 4
tiny_vae = functools.partial(make_model, latent_dim=LATENT, patch=PATCH)  # conftest.make_model with the VAE tests' latent size


def gen(seed: int = 123) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- scoring shapes and identities


CASES = [(VAE3D, (2, 1, PATCH, PATCH, PATCH)), (VAE2D, (3, 1, PATCH, PATCH)), (VAE2D, (2, 3, PATCH, PATCH))]


@pytest.mark.parametrize("cls,shape", CASES, ids=["vae3d", "vae2d-1ch", "vae2d-3ch"])
def test_score_shapes_and_identities(cls, shape):
    model = tiny_vae(cls, shape[1])
    x = rand_input(*shape)
    with torch.no_grad():
        out = model.score(x, 6, gen())
    assert isinstance(out, ScoreOutput)
    b = shape[0]
    assert set(out.scores) >= set(SCORES)
    for name in SCORES:
        s = out.scores[name]
        assert s.shape == (b,), name
        assert torch.isfinite(s).all(), name
    assert out.residual.shape == x.shape
    assert torch.isfinite(out.residual).all() and (out.residual >= 0).all()
    sc = out.scores
    assert (sc["kl"] >= 0).all()
    torch.testing.assert_close(sc["elbo"], sc["recon"] + sc["kl"])
    # residual is |x - sigmoid(decoder(mu))|
    with torch.no_grad():
        mu, _ = model.net.encode_forward(x)
        torch.testing.assert_close(out.residual, (x - model.decode_mean(mu)).abs())


@pytest.mark.parametrize("cls,shape", CASES, ids=["vae3d", "vae2d-1ch", "vae2d-3ch"])
def test_training_step_returns_finite_floats(cls, shape):
    model = tiny_vae(cls, shape[1]).train()
    x = rand_input(*shape, seed=1)
    opts = model.configure_optimizers(1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        out = model.training_step(x, opts, 10.0)
    assert set(out) == {"loss", "recon", "kl"}
    for k, v in out.items():
        assert isinstance(v, float) and math.isfinite(v), k
    assert out["kl"] >= 0
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))  # it did train
    with torch.no_grad():
        v = model.validation_loss(x)
    assert v.shape == (shape[0],) and torch.isfinite(v).all()


def test_batch_invariance_with_decode_chunks():
    """Scores must not depend on how the K×B decoder batch is chunked."""
    model = tiny_vae(VAE2D, 1)
    x = rand_input(3, 1, PATCH, PATCH, seed=4)
    with torch.no_grad():
        ref = model.score(x, 5, gen(9)).scores
        model.params.decode_chunk = 4  # 15 decodes in chunks of 4
        chunked = model.score(x, 5, gen(9)).scores
    for name in SCORES:
        torch.testing.assert_close(chunked[name], ref[name], rtol=1e-4, atol=1e-6)


def test_same_seed_same_scores_different_seed_differs():
    model = tiny_vae(VAE2D, 1)
    x = rand_input(2, 1, PATCH, PATCH)
    with torch.no_grad():
        a = model.score(x, 4, gen(1)).scores["elbo"]
        b = model.score(x, 4, gen(1)).scores["elbo"]
        c = model.score(x, 4, gen(2)).scores["elbo"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_decode_mean_sigmoid_applied_once():
    model = tiny_vae(VAE2D, 1)
    z = torch.randn(16, 4, generator=gen(3)) * 6.0
    with torch.no_grad():
        raw = model.net.decode_forward(z, use_sigmoid=False)
        mean = model.decode_mean(z)
        x = rand_input(16, 1, PATCH, PATCH)
        nll = model.nll(x, z)
    torch.testing.assert_close(mean, torch.sigmoid(raw))
    assert mean.min() >= 0 and mean.max() <= 1
    # sigmoid(sigmoid(.)) would be confined to [0.5, 0.731]
    assert mean.min() < 0.4 and mean.max() > 0.6, (mean.min().item(), mean.max().item())
    torch.testing.assert_close(nll, gaussian_nll(x, mean, model.params.sigma))
    assert model.net.use_sigmoid is False


def test_bernoulli_decoder_uses_logits():
    model = tiny_vae(VAE2D, 1, decoder="bernoulli")
    z = torch.randn(3, 4, generator=gen(5))
    x = rand_input(3, 1, PATCH, PATCH)
    with torch.no_grad():
        logits = model.net.decode_forward(z, use_sigmoid=False)
        got = model.nll(x, z)
    p = torch.sigmoid(logits)
    ref = -(x * torch.log(p) + (1 - x) * torch.log1p(-p)).flatten(1).sum(1)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------- likelihood helpers


def test_gaussian_nll_matches_torch_distribution():
    x = torch.randn(3, 2, 5, dtype=torch.float64)
    mean = torch.randn(3, 2, 5, dtype=torch.float64)
    sigma = 0.37
    ref = -torch.distributions.Normal(mean, sigma).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_nll(x, mean, sigma), ref)
    # sigma = 1/sqrt(2): first term is the plain squared error
    s = 1 / math.sqrt(2)
    n = 10
    const = 0.5 * n * math.log(2 * math.pi * s**2)
    torch.testing.assert_close(gaussian_nll(x, mean, s) - const, (x - mean).pow(2).flatten(1).sum(1))


def test_kl_and_log_normal_match_torch():
    mu = torch.randn(4, 3, dtype=torch.float64)
    logvar = torch.randn(4, 3, dtype=torch.float64)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(kl_standard_normal(mu, logvar), torch.distributions.kl_divergence(q, p).sum(1))
    z = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(log_normal(z, mu, logvar), q.log_prob(z).sum(1))
    assert (kl_standard_normal(torch.zeros(2, 3), torch.zeros(2, 3)) == 0).all()


def test_bernoulli_nll_soft_targets():
    logits = torch.randn(2, 7, dtype=torch.float64)
    x = torch.rand(2, 7, dtype=torch.float64)
    p = torch.sigmoid(logits)
    ref = -(x * p.log() + (1 - x) * (1 - p).log()).sum(1)
    torch.testing.assert_close(bernoulli_nll(x, logits), ref)


# ---------------------------------------------------------------- linear-Gaussian model: exact answers


class LinearGaussian:
    """p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I): everything is available in closed form."""

    def __init__(self, n: int = 6, latent: int = 2, sigma: float = 0.5, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(n, latent, generator=g, dtype=torch.float64)
        self.b = torch.randn(n, generator=g, dtype=torch.float64)
        self.sigma = sigma
        self.n, self.latent = n, latent

    def nll(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return gaussian_nll(x, z @ self.W.T + self.b, self.sigma)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prec = torch.eye(self.latent, dtype=torch.float64) + self.W.T @ self.W / self.sigma**2
        cov = torch.linalg.inv(prec)
        mean = (x - self.b) @ self.W @ cov / self.sigma**2  # (B, L); cov symmetric
        return mean, cov

    def expected_recon(self, x, mu, logvar) -> torch.Tensor:
        """E_q[−log p(x|z)] = (‖x − Wμ − b‖² + tr(W diag(var) Wᵀ)) / (2σ²) + N/2·log(2πσ²)."""
        var = logvar.exp()
        resid = x - mu @ self.W.T - self.b
        tr = (self.W.pow(2) * var[:, None, :]).sum((1, 2))  # tr(W diag(var) W^T) per sample
        return (resid.pow(2).sum(1) + tr) / (2 * self.sigma**2) + 0.5 * self.n * math.log(2 * math.pi * self.sigma**2)

    def neg_log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.n, dtype=torch.float64)
        return -torch.distributions.MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)


@pytest.fixture(scope="module")
def lg_setup():
    lg = LinearGaussian()
    x = torch.randn(3, lg.n, generator=torch.Generator().manual_seed(11), dtype=torch.float64) * 1.5 + lg.b
    post_mean, post_cov = lg.posterior(x)
    # an imperfect (but reasonable) diagonal q: shifted mean, inflated variance
    mu = post_mean + 0.25
    logvar = torch.log(torch.diagonal(post_cov) * 1.8).expand_as(mu).clone()
    return lg, x, mu, logvar


def run_mc(lg_setup, k: int, repeats: int):
    lg, x, mu, logvar = lg_setup
    outs = [mc_scores(x, mu, logvar, lg.nll, k, torch.Generator().manual_seed(1000 + r), chunk=4096) for r in range(repeats)]
    return {name: torch.stack([o[name] for o in outs]) for name in SCORES}  # (R, B)


def test_linear_gaussian_mc_recon_converges_to_analytic(lg_setup):
    lg, x, mu, logvar = lg_setup
    analytic = lg.expected_recon(x, mu, logvar)
    small = run_mc(lg_setup, 10, 30)["recon"]
    large = run_mc(lg_setup, 10_000, 5)["recon"]
    err_small = (small - analytic).abs().mean().item()
    err_large = (large - analytic).abs().mean().item()
    assert err_large < err_small / 5, (err_small, err_large)
    rel = ((large - analytic).abs() / analytic.abs()).max().item()
    assert rel < 0.03, rel
    # KL is analytic: identical for every K
    torch.testing.assert_close(run_mc(lg_setup, 3, 1)["kl"][0], kl_standard_normal(mu, logvar))


def test_linear_gaussian_elbo_and_iwae_bounds(lg_setup):
    lg, x, mu, logvar = lg_setup
    exact = lg.neg_log_marginal(x)  # −log p(x)
    analytic_elbo = lg.expected_recon(x, mu, logvar) + kl_standard_normal(mu, logvar)
    assert (analytic_elbo > exact).all()  # q is not the posterior: a strict gap
    gap = (analytic_elbo - exact).min().item()
    assert gap > 0.05, gap

    s10 = run_mc(lg_setup, 10, 40)
    # IWAE bound is tighter: score (a negative lower bound) is below the ELBO score on average
    assert (s10["iwae"].mean(0) < s10["elbo"].mean(0)).all()
    # still a bound on average: above the exact −log p(x)
    assert (s10["iwae"].mean(0) > exact - 0.02).all()

    s_large = run_mc(lg_setup, 10_000, 10)
    iwae_large = s_large["iwae"].mean(0)
    err_large = (iwae_large - exact).abs()
    err_small = (s10["iwae"].mean(0) - exact).abs()
    assert (err_large < 0.02).all(), err_large
    assert (err_large < err_small).all()
    assert (iwae_large < s_large["elbo"].mean(0)).all()


def test_iwae_exact_when_q_is_the_true_posterior():
    """With a 1-D latent the posterior is diagonal, so q = p(z|x) and every log-weight equals log p(x)."""
    lg = LinearGaussian(n=4, latent=1, sigma=0.8, seed=3)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64) + lg.b
    mean, cov = lg.posterior(x)
    logvar = torch.log(cov.diagonal()).expand_as(mean).clone()
    out = mc_scores(x, mean, logvar, lg.nll, 7, torch.Generator().manual_seed(0))
    exact = lg.neg_log_marginal(x)
    torch.testing.assert_close(out["iwae"], exact, rtol=1e-5, atol=1e-5)
    # and the analytic ELBO equals log p(x) too (zero gap)
    torch.testing.assert_close(lg.expected_recon(x, mean, logvar) + kl_standard_normal(mean, logvar), exact, rtol=1e-6, atol=1e-6)


def test_mc_scores_batch_invariance_common_random_numbers(lg_setup):
    lg, x, mu, logvar = lg_setup
    full = mc_scores(x, mu, logvar, lg.nll, 50, torch.Generator().manual_seed(4))
    for i in range(len(x)):
        one = mc_scores(x[i : i + 1], mu[i : i + 1], logvar[i : i + 1], lg.nll, 50, torch.Generator().manual_seed(4))
        for name in SCORES:
            torch.testing.assert_close(one[name][0], full[name][i])
