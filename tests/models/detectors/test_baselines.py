"""Closed-form baselines (PCA reconstruction error, intensity z-score) in 2D and 3D."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import validate
from sklearn.decomposition import PCA as SkPCA

from models.checkpoint import MODEL_KEYS, load_checkpoint, save_checkpoint
from models.detector import Detector, ScoreOutput
from models.detectors.pca.params import PCAParams
from models.nets.complexity import jpeg_bits, png_bits
from models.training import fit
from models.zoo import DETECTORS, build
from preprocessing.cubes import centre_patch

torch.set_num_threads(2)

PATCH = 28
NAMES = ("pca2d", "pca3d", "intensity2d", "intensity3d")


def rand(*shape, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def make(name: str, in_channels: int = 1, patch: int = PATCH, **kw) -> Detector:
    cls = DETECTORS[name]
    return cls(cls.Params(name=name, **kw), in_channels, patch).eval()


def score(model: Detector, x: torch.Tensor) -> ScoreOutput:
    return model.score(x, 1, torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- interface


@pytest.mark.parametrize("name", NAMES)
def test_closed_form_interface(name):
    model = make(name)
    assert model.configure_optimizers(1e-3) == []
    assert list(model.parameters()) == []
    with pytest.raises(RuntimeError, match="closed form"):
        model.training_step(rand(2, 1, *[PATCH] * model.spatial_dims), [], 1.0)


def test_config_accepts_baselines_and_checks_params(tmp_path):
    cfg = validate({"model": {"name": "pca2d", "n_components": 8, "whiten": True}}, base_dir=tmp_path)
    assert cfg.model == PCAParams(name="pca2d", n_components=8, whiten=True)
    cfg = validate({"model": {"name": "intensity3d", "statistic": "high_fraction", "threshold": 0.4}}, base_dir=tmp_path)
    assert cfg.model.statistic == "high_fraction"
    with pytest.raises(Exception, match="n_components"):
        validate({"model": {"name": "pca3d", "n_components": 0}}, base_dir=tmp_path)
    with pytest.raises(Exception, match="statistic"):
        validate({"model": {"name": "intensity3d", "statistic": "median"}}, base_dir=tmp_path)


# ---------------------------------------------------------------- shapes


CASES = [
    ("pca2d", (6, 1, PATCH, PATCH)),
    ("pca2d", (6, 3, PATCH, PATCH)),
    ("pca3d", (5, 1, PATCH, PATCH, PATCH)),
    ("intensity2d", (6, 1, PATCH, PATCH)),
    ("intensity2d", (6, 3, PATCH, PATCH)),
    ("intensity3d", (5, 1, PATCH, PATCH, PATCH)),
]
IDS = ["pca2d-1ch", "pca2d-3ch", "pca3d", "intensity2d-1ch", "intensity2d-3ch", "intensity3d"]


@pytest.mark.parametrize("name,shape", CASES, ids=IDS)
def test_fit_and_score_shapes(name, shape):
    model = make(name, shape[1], n_components=4) if name.startswith("pca") else make(name, shape[1])
    terms = model.fit_arrays(rand(*shape, seed=1))
    assert "loss" in terms and all(isinstance(v, float) and math.isfinite(v) for v in terms.values())
    x = rand(3, *shape[1:], seed=2)
    out = score(model, x)
    assert isinstance(out, ScoreOutput)
    assert set(out.scores) == set(model.score_names)
    for k, s in out.scores.items():
        assert s.shape == (3,) and torch.isfinite(s).all(), k
    assert out.residual.shape == x.shape
    assert torch.isfinite(out.residual).all() and (out.residual >= 0).all()
    with torch.no_grad():
        v = model.validation_loss(x)
    assert v.shape == (3,) and torch.isfinite(v).all()
    # batch invariance: a sample scores the same alone as in a batch
    alone = score(model, x[1:2])
    for k in out.scores:
        torch.testing.assert_close(alone.scores[k][0], out.scores[k][1])
    with pytest.raises(ValueError, match="expected input"):
        score(model, rand(2, shape[1] + 1, *shape[2:]))


# ---------------------------------------------------------------- PCA


def subspace_data(n: int, k: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, k + 1)))
    basis, off = q[:, :k], q[:, k]  # off ⟂ basis
    mu = rng.uniform(0.2, 0.8, d)
    coeff = rng.standard_normal((n, k)) * 2.0
    return (mu + coeff @ basis.T).astype(np.float32), basis, off, mu


def test_pca_subspace_in_vs_off():
    k, d = 5, PATCH * PATCH
    train, basis, off, mu = subspace_data(60, k, d)
    model = make("pca2d", n_components=k)
    model.fit_arrays(torch.from_numpy(train).view(-1, 1, PATCH, PATCH))
    assert int(model.n_fitted) == k
    rng = np.random.default_rng(1)
    inside = (mu + rng.standard_normal((4, k)) @ basis.T).astype(np.float32)
    outside = inside + 3.0 * off.astype(np.float32)  # ‖3·off‖² = 9
    s_in = score(model, torch.from_numpy(inside).view(-1, 1, PATCH, PATCH)).scores["pca_recon"]
    s_out = score(model, torch.from_numpy(outside).view(-1, 1, PATCH, PATCH)).scores["pca_recon"]
    assert s_in.max() < 1e-9
    torch.testing.assert_close(s_out, torch.full((4,), 9.0 / d), rtol=1e-3, atol=0)
    # the residual map carries the off-subspace component
    res = score(model, torch.from_numpy(outside[:1]).view(1, 1, PATCH, PATCH)).residual
    np.testing.assert_allclose(res.flatten().numpy(), np.abs(3.0 * off), atol=1e-4)
    # more components than the subspace: still ~0 inside, and still large outside
    model = make("pca2d", n_components=k + 3)
    model.fit_arrays(torch.from_numpy(train).view(-1, 1, PATCH, PATCH))
    assert score(model, torch.from_numpy(inside).view(-1, 1, PATCH, PATCH)).scores["pca_recon"].max() < 1e-9
    assert score(model, torch.from_numpy(outside).view(-1, 1, PATCH, PATCH)).scores["pca_recon"].min() > 0.5 * 9.0 / d


@pytest.mark.parametrize("whiten", [False, True])
def test_pca_matches_sklearn(whiten):
    n, c, k = 40, 3, 8
    train = rand(n, c, PATCH, PATCH, seed=3)
    test = rand(7, c, PATCH, PATCH, seed=4) * 1.3
    model = make("pca2d", c, n_components=k, whiten=whiten)
    model.fit_arrays(train)
    ref = SkPCA(n_components=k, whiten=whiten, svd_solver="auto", random_state=0).fit(train.reshape(n, -1).numpy())
    flat = test.reshape(7, -1).numpy()
    z = ref.transform(flat)
    recon = ref.inverse_transform(z)
    out = score(model, test)
    np.testing.assert_allclose(out.residual.reshape(7, -1).numpy(), np.abs(flat - recon), atol=1e-4)
    np.testing.assert_allclose(out.scores["pca_recon"].numpy(), ((flat - recon) ** 2).mean(1), rtol=1e-4)
    np.testing.assert_allclose(out.scores["pca_latent"].numpy(), (z**2).sum(1), rtol=1e-3)
    np.testing.assert_allclose(model.mean.numpy(), ref.mean_, atol=1e-6)
    np.testing.assert_allclose(model.explained_variance.numpy(), ref.explained_variance_, rtol=1e-4)
    # components are orthonormal
    g = model.components @ model.components.T
    torch.testing.assert_close(g, torch.eye(k), atol=1e-4, rtol=0)


def test_pca_fewer_samples_than_components():
    model = make("pca3d", n_components=32)
    train = rand(5, 1, PATCH, PATCH, PATCH, seed=5)
    terms = model.fit_arrays(train)
    assert int(model.n_fitted) == 4 and terms["components"] == 4.0  # rank of 5 centred samples
    assert model.components.shape == (32, PATCH**3)
    assert torch.count_nonzero(model.components[4:]) == 0 and torch.count_nonzero(model.explained_variance[4:]) == 0
    assert torch.count_nonzero(model.components[:4].abs().sum(1)) == 4
    out = score(model, train)  # 5 points span a 4-dim affine subspace: reconstructed exactly
    assert out.scores["pca_recon"].max() < 1e-8
    assert score(model, rand(2, 1, PATCH, PATCH, PATCH, seed=6)).scores["pca_recon"].min() > 0.01
    # whitening with zero-padded components stays finite
    model.params.whiten = True
    assert torch.isfinite(score(model, train).scores["pca_latent"]).all()
    # a single sample: no component, the reconstruction is the training patch itself
    one = make("pca2d", n_components=3)
    one.fit_arrays(rand(1, 1, PATCH, PATCH, seed=7))
    assert int(one.n_fitted) == 0
    x = rand(2, 1, PATCH, PATCH, seed=8)
    torch.testing.assert_close(score(one, x).residual, (x - rand(1, 1, PATCH, PATCH, seed=7)).abs())


# ---------------------------------------------------------------- intensity statistic


def test_intensity_zscore_orientation():
    rng = np.random.default_rng(0)
    levels = rng.uniform(0.2, 0.4, 30).astype(np.float32)
    train = torch.from_numpy(levels)[:, None, None, None, None] + 0.01 * rand(30, 1, PATCH, PATCH, PATCH, seed=9)
    model = make("intensity3d")
    terms = model.fit_arrays(train)
    m = float(model.stat_mean)
    s = float(train.reshape(30, -1).mean(1).double().std())
    assert m == pytest.approx(float(train.mean()), abs=1e-5) and terms["stat_std"] == pytest.approx(s, rel=1e-4)
    torch.testing.assert_close(model.mean_image, train.mean(0))
    x = torch.stack([torch.full((1, PATCH, PATCH, PATCH), v) for v in (m, m + s, m + 3 * s, m - 2 * s)])
    out = score(model, x)
    z, raw = out.scores["intensity"], out.scores["intensity_raw"]
    assert z[0] < 1e-3
    assert z[1] == pytest.approx(1.0, rel=1e-3) and z[2] == pytest.approx(3.0, rel=1e-3)
    assert z[2] > z[1] > z[0]  # brighter scores higher
    assert z[3] == pytest.approx(2.0, rel=1e-3)  # two-sided: darker is anomalous too
    torch.testing.assert_close(raw, x.reshape(4, -1).mean(1))
    torch.testing.assert_close(out.residual, (x - model.mean_image).abs())
    model.params.distance = "upper"
    zu = score(model, x).scores["intensity"]
    assert zu[3] == pytest.approx(-2.0, rel=1e-3) and zu[2] == pytest.approx(3.0, rel=1e-3)
    model.params.distance = "lower"
    assert score(model, x).scores["intensity"][3] == pytest.approx(2.0, rel=1e-3)


@pytest.mark.parametrize("statistic", ["std", "max", "high_fraction"])
def test_intensity_statistics(statistic):
    model = make("intensity2d", statistic=statistic, threshold=0.5)
    model.fit_arrays(rand(10, 1, PATCH, PATCH, seed=10) * 0.6)
    x = rand(3, 1, PATCH, PATCH, seed=11)
    flat = x.reshape(3, -1)
    want = {"std": flat.std(1, correction=0), "max": flat.amax(1), "high_fraction": (flat > 0.5).float().mean(1)}[statistic]
    torch.testing.assert_close(score(model, x).scores["intensity_raw"], want)


def test_compression_statistics_rank_noise_above_flat_and_use_the_value_range():
    """complexity (PNG) and jpeg: a noisy patch costs more bits than a flat one; value_range maps z-scores to 8 bits."""
    flat, noise = torch.full((1, 1, 28, 28), 0.5), rand(1, 1, 28, 28, seed=5)
    for fn in (png_bits, jpeg_bits):
        bits = fn(torch.cat([flat, noise]))
        assert bits[1] > 2 * bits[0]
    z = (noise - 0.5) * 4  # z-score-like values in [-2, 2]
    torch.testing.assert_close(jpeg_bits(z, -2.0, 2.0), jpeg_bits(noise))  # the same 8-bit image
    model = make("intensity2d", statistic="jpeg", value_range=[-2.0, 2.0])
    torch.testing.assert_close(model.statistic(z), jpeg_bits(noise))


def test_compression_statistic_on_zscored_images_needs_a_value_range(tmp_path):
    raw = {"extract": {"normalise": "zscore"}, "model": {"name": "intensity2d", "statistic": "jpeg"}}
    with pytest.raises(Exception, match="model.value_range"):
        validate(raw, base_dir=tmp_path)
    raw["model"]["value_range"] = [-3, 3]
    assert validate(raw, base_dir=tmp_path).model.value_range == [-3.0, 3.0]
    vae = {"extract": {"normalise": "zscore"}, "model": {"name": "vae2d", "value_range": [1, 1]}}  # elbo_ic's PNG size
    with pytest.raises(Exception, match="model.value_range"):
        validate(vae, base_dir=tmp_path)
    assert validate({"model": {"name": "vae2d"}}, base_dir=tmp_path).model.value_range == [0.0, 1.0]


def test_intensity_constant_training_statistic_is_finite():
    model = make("intensity2d")
    model.fit_arrays(torch.full((4, 1, PATCH, PATCH), 0.3))  # std 0 → floored at min_std
    assert float(model.stat_std) == pytest.approx(model.params.min_std)
    out = score(model, torch.full((2, 1, PATCH, PATCH), 0.3) + torch.tensor([0.0, 0.1])[:, None, None, None])
    assert torch.isfinite(out.scores["intensity"]).all() and out.scores["intensity"][1] > out.scores["intensity"][0]
    one = make("intensity3d")
    one.fit_arrays(rand(1, 1, PATCH, PATCH, PATCH))  # a single sample has no spread
    assert float(one.stat_std) == pytest.approx(one.params.min_std)


# ---------------------------------------------------------------- checkpoints and the train stage


@pytest.mark.parametrize("name,kw,shape", [
    ("pca3d", {"n_components": 7, "whiten": True}, (9, 1, PATCH, PATCH, PATCH)),
    ("pca2d", {"n_components": 5}, (9, 3, PATCH, PATCH)),
    ("intensity3d", {"statistic": "high_fraction", "threshold": 0.6, "distance": "upper"}, (9, 1, PATCH, PATCH, PATCH)),
], ids=["pca3d", "pca2d-3ch", "intensity3d"])
def test_checkpoint_round_trip(tmp_path, name, kw, shape):
    model = make(name, shape[1], **kw)
    model.fit_arrays(rand(*shape, seed=12))
    x = rand(4, *shape[1:], seed=13)
    ref = score(model, x)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, {"hu_window": [-1000, 400], "mode": "window"}, {"seed": 0})
    loaded, payload = load_checkpoint(path)
    assert type(loaded) is type(model) and loaded.params == model.params and payload["model_name"] == name
    assert set(payload) == set(MODEL_KEYS) | {"seed"}  # MODEL_KEYS is exactly what save_checkpoint writes besides extra
    out = score(loaded, x)
    for k in ref.scores:
        assert torch.equal(out.scores[k], ref.scores[k]), k
    assert torch.equal(out.residual, ref.residual)
    fresh = make(name, shape[1], **kw)  # an unfitted model scores differently
    assert not torch.equal(score(fresh, x).residual, ref.residual)


@pytest.mark.parametrize("name,spatial", [("pca3d", 3), ("intensity2d", 2)])
def test_train_fit_end_to_end(tmp_path, name, spatial):
    model_cfg = {"name": name, "n_components": 4} if name.startswith("pca") else {"name": name}
    cfg = validate({"model": model_cfg, "run": {"device": "cpu"}, "train": {"patch_size": PATCH, "batch_size": 4}}, base_dir=tmp_path)
    rng = np.random.default_rng(0)
    train_x = rng.uniform(0, 1, (10, 1, *[32] * spatial)).astype(np.float32)
    val_x = rng.uniform(0, 1, (5, 1, *[32] * spatial)).astype(np.float32)
    model = build(name, cfg.model, 1, PATCH)
    norm = {"hu_window": [-1000.0, 400.0], "mode": "window", "cube_size": 32}
    summary = fit(model, train_x, val_x, cfg, tmp_path, norm)
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "curves.csv").is_file()
    assert summary["stop_reason"] == "closed-form fit" and not summary["diverged"]
    assert math.isfinite(summary["best_val_loss"])
    curves = pd.read_csv(tmp_path / "curves.csv")
    assert len(curves) == 1 and {"epoch", "train_loss", "val_loss"} <= set(curves.columns)
    loaded, payload = load_checkpoint(tmp_path / "model.pt")
    assert payload["normalisation"] == norm and payload["patch_size"] == PATCH
    # the fit used the centre patches, and the checkpoint reproduces the fitted model
    x = torch.from_numpy(np.ascontiguousarray(centre_patch(val_x, PATCH)))
    with torch.no_grad():
        assert float(loaded.validation_loss(x).mean()) == pytest.approx(summary["best_val_loss"], rel=1e-5)
    if name.startswith("pca"):
        np.testing.assert_allclose(loaded.mean.numpy(), centre_patch(train_x, PATCH).reshape(10, -1).mean(0), atol=1e-6)
        assert int(loaded.n_fitted) == 4
    else:
        assert float(loaded.stat_mean) == pytest.approx(float(centre_patch(train_x, PATCH).reshape(10, -1).mean(1).mean()), rel=1e-5)
