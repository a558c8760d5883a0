"""WGAN-GP, AnoGAN latent search and f-AnoGAN: shapes, gradient penalty, search, invariance, phases."""

from __future__ import annotations

import pytest
import torch
from conftest import validate

from models.detectors.anogan.params import AnoGANParams
from models.detectors.fanogan.params import FAnoGANParams
from models.nets.gan_losses import gradient_penalty
from models.zoo import DETECTORS, build
from pipeline.core.errors import ConfigError

P = 28


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(name: str, channels: int = 1, **kw):
    cls = DETECTORS[name]
    params = cls.Params(name=name, latent_dim=8, channels=[4, 8], strides=[2, 2], **kw)
    torch.manual_seed(0)
    return build(name, params, channels, P)


CASES = [("anogan3d", 1), ("anogan2d", 1), ("anogan2d", 3), ("fanogan3d", 1), ("fanogan2d", 3)]


@pytest.mark.parametrize("name,channels", CASES)
def test_shapes_ranges_and_training_steps(name, channels):
    kw = {"search_steps": 3} if name.startswith("anogan") else {}
    m = tiny(name, channels, **kw)
    dims = m.spatial_dims
    x = torch.rand(2, channels, *[P] * dims)
    opts = m.configure_optimizers(1e-3)
    if name.startswith("fanogan"):
        m.on_epoch_start(0, 4)
    for _ in range(2):
        out = m.training_step(x, opts, 10.0)
        assert {"loss", "wasserstein", "gp"} <= set(out) and all(torch.isfinite(torch.tensor(v)) for v in out.values())
    g = m.G(m.sample_z(3, "cpu"))
    assert g.shape == (3, channels, *[P] * dims) and g.min() >= 0 and g.max() <= 1
    m.eval()
    res = m.score(x, 1, torch.Generator().manual_seed(0))
    assert set(res.scores) == set(m.score_names)
    for v in res.scores.values():
        assert v.shape == (2,) and torch.isfinite(v).all() and (v >= 0).all()
    assert res.residual.shape == x.shape


def test_gradient_penalty_zero_for_unit_lipschitz_linear_critic_and_positive_for_steeper():
    torch.manual_seed(0)
    real, fake = torch.rand(8, 1, 6, 6), torch.rand(8, 1, 6, 6)
    w = torch.randn(36)
    w = w / w.norm()
    assert gradient_penalty(lambda x: x.flatten(1) @ w, real, fake).item() < 1e-10
    assert gradient_penalty(lambda x: x.flatten(1) @ (3 * w), real, fake).item() == pytest.approx(4.0, rel=1e-5)


def test_latent_search_reduces_loss_and_recovers_a_generated_sample():
    m = tiny("anogan2d", search_steps=300, search_lr=0.05, restarts=1, search_lambda=0.0)
    m.eval()
    z0 = torch.randn(4, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        x = m.G(z0)
    gen = torch.Generator().manual_seed(1)
    start = m.sample_z(1, "cpu", torch.Generator().manual_seed(1)).expand(4, -1)
    with torch.no_grad():
        initial = (x - m.G(start)).abs().flatten(1).sum(1)
    z, scores = m.search(x, gen)
    assert (scores["residual"] < 0.2 * initial).all(), (scores["residual"], initial)
    assert ((z - z0).norm(dim=1) < (start - z0).norm(dim=1)).all()


def test_restarts_keep_the_best_and_never_do_worse():
    x = torch.rand(3, 1, P, P)
    one = tiny("anogan2d", search_steps=10, restarts=1).eval()
    many = tiny("anogan2d", search_steps=10, restarts=4).eval()
    s1 = one.score(x, 1, torch.Generator().manual_seed(0)).scores["anogan"]
    s4 = many.score(x, 1, torch.Generator().manual_seed(0)).scores["anogan"]
    assert (s4 <= s1 + 1e-4).all()  # restart 0 of `many` is the same initial code as `one`


def test_fanogan_phases_train_only_the_encoder_after_the_gan():
    m = tiny("fanogan2d", encoder_epochs_fraction=0.5)
    opts = m.configure_optimizers(1e-2)
    m.on_epoch_start(0, 10)
    assert not m.selection_active()
    m.on_epoch_start(5, 10)
    assert m.selection_active()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    out = m.training_step(torch.rand(4, 1, P, P), opts, 10.0)
    assert "izi" in out
    after = m.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("E.") for k in changed), changed


def test_generator_updates_every_n_critic_steps():
    m = tiny("anogan2d", n_critic=3)
    opts = m.configure_optimizers(1e-3)
    outs = [m.training_step(torch.rand(2, 1, P, P), opts, 10.0) for _ in range(6)]
    assert ["g_loss" in o for o in outs] == [False, False, True, False, False, True]


def test_config_validation(tmp_path):
    cfg = validate({"model": {"name": "anogan3d", "latent_dim": 8, "search_steps": 50, "restarts": 2}}, base_dir=tmp_path)
    assert isinstance(cfg.model, AnoGANParams) and cfg.model.restarts == 2
    assert isinstance(validate({"model": {"name": "fanogan2d"}}, base_dir=tmp_path).model, FAnoGANParams)
    with pytest.raises(ConfigError, match="search_stepz"):
        validate({"model": {"name": "anogan3d", "search_stepz": 5}}, base_dir=tmp_path)
