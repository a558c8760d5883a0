"""BiGAN/ALI and α-GAN detectors (the X-ray GAN study): scores, training steps, the gradient routing of each
model (BiGAN never chains E and G; α-GAN's E learns only from reconstruction + code adversary),
batch invariance and config validation."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import check_score_output, gen, make_model, rand_input, validate

from models.detectors.alphagan.model import AlphaGAN2D, AlphaGAN3D
from models.detectors.alphagan.params import AlphaGANParams
from models.detectors.bigan.model import BiGAN2D, BiGAN3D, PairDiscriminator
from models.detectors.bigan.params import BiGANParams
from models.nets.adversarial_ae import bce_real
from pipeline.core.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

PATCH = 28
LATENT = 8
SCORES = ("l1", "l2", "enc_fm", "disc_fm", "disc")




CASES = []
IDS = []
for _cls2, _cls3, _base in ((BiGAN2D, BiGAN3D, "bigan"), (AlphaGAN2D, AlphaGAN3D, "alphagan")):
    CASES += [(_cls3, (2, 1, PATCH, PATCH, PATCH)), (_cls2, (3, 1, PATCH, PATCH)), (_cls2, (2, 3, PATCH, PATCH))]
    IDS += [f"{_base}3d", f"{_base}2d-1ch", f"{_base}2d-3ch"]


def test_defaults():
    assert BiGANParams().name == "bigan3d" and AlphaGANParams().name == "alphagan3d"
    assert AlphaGANParams().betas == (0.5, 0.999)


# ---------------------------------------------------------------- scoring


def _disc(model, x, z_hat):
    """(logit of "real" for the query, features f(x)) for either discriminator."""
    if isinstance(model.D, PairDiscriminator):
        return model.D.forward_with_features(x, z_hat)
    return model.D.forward_with_features(x)


@pytest.mark.parametrize("cls,shape", CASES, ids=IDS)
def test_scores_match_definitions(cls, shape):
    model = make_model(cls, shape[1])
    x = rand_input(*shape)
    out = model.score(x, 1, gen())
    check_score_output(out, SCORES, x)
    with torch.no_grad():
        z_hat = model.E(x)
        rec = model.G(z_hat)
        samples = model.G(torch.randn(4, LATENT) * 3)
        logit, f_x = _disc(model, x, z_hat)
        _, f_rec = _disc(model, rec, z_hat)
        enc_fm = (model.E.features(x) - model.E.features(rec)).flatten(1).norm(dim=1)
    for img in (rec, samples):
        assert img.shape[1:] == x.shape[1:] and img.min() >= 0 and img.max() <= 1
    s = out.scores
    torch.testing.assert_close(out.residual, (x - rec).abs())
    torch.testing.assert_close(s["l1"], out.residual.flatten(1).mean(1))
    torch.testing.assert_close(s["l2"], out.residual.pow(2).flatten(1).mean(1))
    torch.testing.assert_close(s["enc_fm"], enc_fm)
    torch.testing.assert_close(s["disc_fm"], (f_x - f_rec).norm(dim=1))
    torch.testing.assert_close(s["disc"], -logit)  # higher = judged less real


def test_score_runs_in_inference_mode():
    model = make_model(AlphaGAN2D, 1)
    seen = []
    model.G.register_forward_pre_hook(lambda mod, args: seen.append(torch.is_inference_mode_enabled()))
    model.score(rand_input(2, 1, PATCH, PATCH), 1, gen())
    assert seen and all(seen)


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("cls,shape", CASES, ids=IDS)
def test_training_steps_change_every_network(cls, shape):
    model = make_model(cls, shape[1]).train()
    x = rand_input(*shape, seed=1)
    opts = model.configure_optimizers(1e-3)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for _ in range(2):
        out = model.training_step(x, opts, 10.0)
    expected = {"loss", "d_loss", "g_loss"} | ({"c_loss", "e_loss", "rec"} if cls in (AlphaGAN2D, AlphaGAN3D) else set())
    assert expected <= set(out)
    for k, v in out.items():
        assert isinstance(v, float) and math.isfinite(v), k
    after = model.state_dict()
    nets = ("D.", "G.", "E.") + (("C.",) if hasattr(model, "C") else ())
    for net in nets:
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(net)), net
    with torch.no_grad():
        v = model.validation_loss(x)
        rec = model.G(model.E(x))
    assert v.shape == (shape[0],)
    torch.testing.assert_close(v, (x - rec).abs().flatten(1).mean(1))


def test_bigan_never_chains_encoder_and_generator():
    model = make_model(BiGAN2D, 1).train()
    enc_out, gen_in = [], []
    # keep the tensors themselves alive, so a freed buffer's address cannot be reused and alias
    model.E.register_forward_hook(lambda mod, args, out: enc_out.append(out))
    model.G.register_forward_pre_hook(lambda mod, args: gen_in.append(args[0]))
    opts = model.configure_optimizers(1e-3)
    for _ in range(2):
        model.training_step(rand_input(3, 1, PATCH, PATCH), opts, 10.0)
    assert enc_out and gen_in
    assert not {t.data_ptr() for t in enc_out} & {t.data_ptr() for t in gen_in}


def test_bigan_discriminator_sees_pairs():
    model = make_model(BiGAN2D, 1)
    x = rand_input(2, 1, PATCH, PATCH)
    z1, z2 = torch.randn(2, LATENT), torch.randn(2, LATENT)
    with torch.no_grad():
        assert not torch.allclose(model.D(x, z1), model.D(x, z2))  # the code matters
        assert model.D(x, z1).shape == (2,)


def test_alphagan_encoder_gets_only_reconstruction_and_code_gradients():
    """With rec_weight = 0, E's gradient after a step is exactly that of BCE(C(E(x)), real):
    the image discriminator's loss does not reach E (Rosca et al.'s separate E and G losses)."""
    model = make_model(AlphaGAN2D, 1, rec_weight=0.0).train()
    x = rand_input(3, 1, PATCH, PATCH)
    opts = [torch.optim.SGD(o.param_groups[0]["params"], lr=0.0) for o in model.configure_optimizers(1e-3)]
    model.training_step(x, opts, 1e9)
    got = [p.grad.clone() for p in model.E.parameters()]
    for p in model.E.parameters():
        p.grad = None
    bce_real(model.code_logit(model.E(x))).backward()
    for g, p in zip(got, model.E.parameters()):
        torch.testing.assert_close(g, p.grad)
    # and G's gradient ignores the code discriminator: recompute its loss with the same prior draw
    model2 = make_model(AlphaGAN2D, 1, rec_weight=0.0).train()
    torch.manual_seed(11)
    model2.training_step(x, [torch.optim.SGD(o.param_groups[0]["params"], lr=0.0) for o in model2.configure_optimizers(1e-3)], 1e9)
    g_got = [p.grad.clone() for p in model2.G.parameters()]
    torch.manual_seed(11)
    z = model2.sample_z(3, "cpu")
    for p in model2.G.parameters():
        p.grad = None
    (bce_real(model2.D(model2.G(model2.E(x)))) + bce_real(model2.D(model2.G(z)))).backward(inputs=list(model2.G.parameters()))
    for g, p in zip(g_got, model2.G.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_alphagan_reconstruction_improves():
    model = make_model(AlphaGAN2D, 1).train()
    x = rand_input(4, 1, PATCH, PATCH).mul(0.3).add(0.35)
    opts = model.configure_optimizers(2e-3)
    with torch.no_grad():
        start = model.validation_loss(x).mean().item()
    for _ in range(30):
        model.training_step(x, opts, 10.0)
    with torch.no_grad():
        end = model.validation_loss(x).mean().item()
    assert end < start, (start, end)


# ---------------------------------------------------------------- config


def test_config_validates_model_sections(tmp_path):
    cfg = validate({"model": {"name": "bigan3d", "latent_dim": 16, "channels": [8, 16], "strides": [2, 2], "disc_features": 32}}, base_dir=tmp_path)
    assert isinstance(cfg.model, BiGANParams) and cfg.model.disc_features == 32 and cfg.model.latent_dim == 16
    cfg = validate({"model": {"name": "alphagan2d", "rec_weight": 1, "code_hidden": 64, "betas": [0.5, 0.9]}}, base_dir=tmp_path)
    assert isinstance(cfg.model, AlphaGANParams) and cfg.model.rec_weight == 1.0 and cfg.model.betas == (0.5, 0.9)
    for name in ("bigan2d", "bigan3d", "alphagan2d", "alphagan3d"):
        validate({"model": {"name": name}}, base_dir=tmp_path)  # defaults are valid for the default patch


@pytest.mark.parametrize("model,needle", [
    ({"name": "alphagan3d", "rec_wieght": 5}, "rec_weight"),  # misspelt → suggestion
    ({"name": "bigan3d", "rec_weight": 5}, "unknown key"),  # α-GAN-only param on BiGAN
    ({"name": "bigan3d", "disc_featurs": 5}, "disc_features"),
    ({"name": "alphagan3d", "strides": [2, 2, 2], "channels": [4, 8, 16]}, "do not divide"),
    ({"name": "bigan2d", "channels": [4, 8]}, "model.strides"),
    ({"name": "alphagan2d", "rec_weight": -1}, "rec_weight"),
])
def test_config_errors(tmp_path, model, needle):
    with pytest.raises(ConfigError, match=needle):
        validate({"model": model}, base_dir=tmp_path)
