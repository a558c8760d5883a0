"""Repairs of the GAN-family detectors: DCGAN-style networks (models.nets ``arch: dcgan``) and the
WGAN-GP epoch-selection loss (``selection: nn_bank``)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_gan, validate

from models.nets import blocks
from models.zoo import DETECTORS
from pipeline.core.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

P = 28


tiny = tiny_gan


@pytest.mark.parametrize("dims,strides", [(2, [2, 2]), (3, [2, 2, 1])])
@pytest.mark.parametrize("norm", ["batch", "instance", "layer", "none"])
def test_dcgan_generator_shapes_and_range(dims, strides, norm):
    ch = [4, 8] if len(strides) == 2 else [4, 8, 8]
    g = blocks.GeneratorNet(dims, 6, 1, P, ch, strides, "dcgan", norm).eval()
    out = g(torch.randn(3, 6))
    assert out.shape == (3, 1, *[P] * dims) and out.min() >= 0 and out.max() <= 1


def test_dcgan_critic_is_global_and_features_match_forward():
    d = blocks.CriticNet(2, 1, P, [4, 8], [2, 2], "dcgan", "none")
    x = torch.rand(5, 1, P, P)
    out, f = d.forward_with_features(x)
    assert out.shape == (5,) and f.shape == (5, 8 * 7 * 7)
    assert torch.allclose(out, d(x)) and torch.allclose(f, d.features(x))
    # a global linear head: the output is not the mean of a patch map, so it is not invariant to
    # shifting the image content (a patch-mean critic nearly is, away from the borders)
    assert isinstance(d.net.head, torch.nn.Linear) and d.net.head.in_features == 8 * 7 * 7


def test_dcgan_critic_and_encoder_are_per_sample():
    torch.manual_seed(0)
    for net in (blocks.CriticNet(2, 1, P, [4, 8], [2, 2], "dcgan", "layer"), blocks.EncoderNet(2, 1, P, 6, [4, 8], [2, 2], "dcgan", "instance")):
        x = torch.rand(4, 1, P, P)
        assert torch.allclose(net(x)[:1], net(x[:1]), atol=1e-6)


def test_batch_norm_in_the_critic_is_rejected_by_the_config_check():
    base = {"model": {"name": "anogan2d", "latent_dim": 8, "channels": [4, 8], "strides": [2, 2], "arch": "dcgan", "d_norm": "batch"},
            "train": {"patch_size": P}}
    with pytest.raises(ConfigError, match="d_norm"):
        validate(base, base_dir=None)


@pytest.mark.parametrize("arch", ["monai", "dcgan"])
@pytest.mark.parametrize("name", ["anogan2d", "anogan3d", "fanogan2d", "joint2d", "alphagan2d"])
def test_gan_family_trains_and_scores_with_either_arch(name, arch):
    kw = {"search_steps": 2} if name.startswith("anogan") else {}
    m = tiny(name, arch=arch, **kw)
    dims = m.spatial_dims
    x = torch.rand(2, 1, *[P] * dims)
    opts = m.configure_optimizers(1e-3)
    for _ in range(2):
        out = m.training_step(x, opts, 10.0)
        assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
    m.eval()
    res = m.score(x, 1, torch.Generator().manual_seed(0))
    assert set(res.scores) == set(m.score_names) and all(torch.isfinite(v).all() for v in res.scores.values())


def test_nn_bank_validation_loss_is_the_nearest_bank_sample_distance():
    m = tiny("anogan2d", val_bank=40).eval()
    z = m.sample_z(40, "cpu", torch.Generator().manual_seed(12345))
    with torch.no_grad():
        bank = m.G(z)
        x = torch.cat([bank[7:8], torch.rand(3, 1, P, P)])
        got = m.validation_loss(x)
        torch.manual_seed(99)  # the bank does not depend on the global RNG
        again = m.validation_loss(x)
    brute = torch.stack([(xi[None] - bank).abs().flatten(1).mean(1).min() for xi in x])
    assert torch.allclose(got, brute, atol=1e-6) and torch.equal(got, again)
    assert got[0].item() == pytest.approx(0.0, abs=1e-6) and (got[1:] > 0.05).all()


def test_wasserstein_selection_is_still_available_and_differs():
    m = tiny("anogan2d", selection="wasserstein").eval()
    x = torch.rand(3, 1, P, P)
    torch.manual_seed(0)
    with torch.no_grad():
        w = m.validation_loss(x)
    m.params.selection = "nn_bank"
    with torch.no_grad():
        nb = m.validation_loss(x)
    assert w.shape == nb.shape == (3,) and not torch.allclose(w, nb)


def test_search_projection_keeps_codes_in_the_prior_support():
    m = tiny("anogan2d", latent_prior="uniform")
    z = torch.tensor([[3.0, -2.0, 0.5, 0, 0, 0, 0, 0]])
    assert torch.equal(m.project(z), z.clamp(-1, 1))
    m = tiny("anogan2d")
    big = torch.randn(4, 8) * 10
    out = m.project(big)
    r = out.norm(dim=1)
    assert torch.allclose(r, r[0].expand(4)) and 3.5 < r[0] < 6  # 99.9 % radius of χ₈ ≈ 5.0
    small = torch.randn(4, 8) * 0.1
    assert torch.equal(m.project(small), small)
    m = tiny("anogan2d", search_steps=20, search_lr=0.5, latent_prior="uniform").eval()
    z_found, _ = m.search(torch.rand(2, 1, P, P), torch.Generator().manual_seed(0))
    assert z_found.abs().max() <= 1.0


def test_search_normalise_divides_the_terms_by_their_typical_training_size():
    m = tiny("anogan2d", search_steps=3, search_normalise=True).eval()
    train = torch.rand(20, 1, P, P)
    out = m.fit_after_training(train)
    with torch.no_grad():
        f = m.D.features(train)
    s_res = (train - train.mean(0, keepdim=True)).abs().flatten(1).sum(1).mean().item()
    s_feat = (f - f.mean(0, keepdim=True)).abs().sum(1).mean().item()
    assert out["search_scale_residual"] == pytest.approx(s_res, rel=1e-5)
    assert out["search_scale_feature"] == pytest.approx(s_feat, rel=1e-5)
    x = torch.rand(2, 1, P, P)
    _, t_norm = m.search(x, torch.Generator().manual_seed(0))
    m.params.search_normalise = False
    m.fit_after_training(train)
    assert torch.equal(m.term_scale, torch.ones(2))
    _, t_raw = m.search(x, torch.Generator().manual_seed(0))
    assert not torch.allclose(t_norm["residual"], t_raw["residual"])
    assert (t_norm["anogan"] < 10).all() and (t_raw["anogan"] > 10).all()


def test_joint_encoder_head_init_scale_and_layer_norm():
    torch.manual_seed(0)
    a = tiny("joint2d", arch="dcgan", e_norm="layer")
    b = tiny("joint2d", arch="dcgan", e_norm="layer", e_init_scale=0.1)
    x = torch.rand(3, 1, P, P)
    with torch.no_grad():
        assert torch.allclose(b.E(x), 0.1 * a.E(x), atol=1e-6)
        # layer norm in E: the code does not change when the input's contrast and brightness are
        # changed (up to the first convolution's bias, which is why the check is approximate)
        ya, yb = a.E(x), a.E(0.5 * x + 0.2)
    assert (ya - yb).norm() / ya.norm() < 0.5
    with pytest.raises(ConfigError, match="e_init_scale"):
        validate({"model": {"name": "joint2d", "e_init_scale": 0.0}}, base_dir=None)


def test_joint_z_norm_none_feeds_raw_codes_and_unit_is_scale_invariant():
    none = tiny("joint2d", arch="dcgan", z_norm="none").eval()
    unit = tiny("joint2d", arch="dcgan").eval()
    z = torch.randn(2, 8)
    with torch.no_grad():
        assert torch.allclose(unit.generate(z), unit.generate(5 * z), atol=1e-6)  # ‖ẑ‖ gets no gradient in unit mode
        assert not torch.allclose(none.generate(z), none.generate(5 * z), atol=1e-3)


@pytest.mark.parametrize("key,value", [("arch", "stylegan"), ("g_norm", "group"), ("e_norm", "batch")])
def test_bad_arch_and_norm_values_are_config_errors_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"model.{key}"):
        validate({"model": {"name": "joint2d", key: value}}, base_dir=None)


def test_new_options_default_to_the_old_networks():
    for name in ("anogan2d", "fanogan3d", "joint2d", "bigan2d", "alphagan3d"):
        p = DETECTORS[name].Params(name=name)
        assert p.arch == "monai"
    m = tiny("anogan2d")
    assert type(m.G.net).__name__ == "Generator" and not m.D.dc and m.params.search_normalise is False


def test_a_model_folder_without_term_scale_still_loads_unnormalised(tmp_path):
    from models.checkpoint import load_checkpoint, save_checkpoint

    m = tiny("anogan2d", search_steps=2).eval()
    save_checkpoint(tmp_path / "model.pt", m, {"hu_window": [0.0, 1.0], "mode": "window"}, {})
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    del state["term_scale"]  # as written before search_normalise existed
    (tmp_path / "manifest.json").unlink()  # the hand-edited weights no longer match their manifest
    torch.save(state, tmp_path / "model.pt")
    from models.model_folder import manifest_entry
    from pipeline.core import io

    io.write_json(tmp_path / "manifest.json", manifest_entry([tmp_path / "model.pt", tmp_path / "model.json"]))
    loaded, _ = load_checkpoint(tmp_path)
    assert torch.equal(loaded.term_scale, torch.ones(2))
