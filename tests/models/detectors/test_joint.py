"""Jointly trained encoder WGAN-GP (Berg et al. 2019): scores against the paper's formula, the
z normalisation and its NaN guard, joint G+E training, batch invariance and config validation."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import check_score_output, gen, make_model, rand_input, validate

from models.checkpoint import load_checkpoint, save_checkpoint
from models.detectors.joint.model import JointEncoderGAN2D, JointEncoderGAN3D, combined_score, minmax, origin_score, residual_score, unit_normalise
from models.detectors.joint.params import JointParams
from pipeline.core.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

PATCH = 28
LATENT = 8
SCORES = ("joint", "joint_ln", "joint_lo")




CASES = [(JointEncoderGAN3D, (2, 1, PATCH, PATCH, PATCH)), (JointEncoderGAN2D, (3, 1, PATCH, PATCH)), (JointEncoderGAN2D, (2, 3, PATCH, PATCH))]
IDS = ["joint3d", "joint2d-1ch", "joint2d-3ch"]


def test_defaults_are_the_papers():
    p = JointParams()
    assert (p.lambda_gp, p.n_critic, p.encoder_weight, p.score_lambda, p.z_norm) == (10.0, 5, 1.0, 0.05, "unit")


# ---------------------------------------------------------------- scoring


@pytest.mark.parametrize("cls,shape", CASES, ids=IDS)
def test_score_shapes_residual_and_range(cls, shape):
    model = make_model(cls, shape[1])
    x = rand_input(*shape)
    out = model.score(x, 1, gen())
    check_score_output(out, SCORES, x)
    with torch.no_grad():
        z_hat = model.E(x)
        rec = model.generate(z_hat)
        samples = model.generate(torch.randn(5, LATENT) * 3)
    torch.testing.assert_close(out.residual, (x - rec).abs())
    for img in (rec, samples):
        assert img.shape[1:] == x.shape[1:]
        assert img.min() >= 0 and img.max() <= 1
    assert (out.scores["joint_lo"] < 0).all()


def _ref_scores(x: torch.Tensor, z_hat: torch.Tensor, rec: torch.Tensor, lam: float) -> dict[str, torch.Tensor]:
    """Independent loop implementation of Berg et al. eq. (2)-(5)."""
    ln, lo = [], []
    for xi, ri, zi in zip(x, rec, z_hat):
        wx = (xi - xi.min()) / (xi.max() - xi.min())
        wr = (ri - ri.min()) / (ri.max() - ri.min())
        ln.append(torch.sqrt(((wx - wr) ** 2).sum()) / xi.numel())
        lo.append(-torch.sqrt((zi**2).sum()) / math.sqrt(zi.numel()))
    ln, lo = torch.stack(ln), torch.stack(lo)
    return {"joint": lam * ln + (1 - lam) * lo, "joint_ln": ln, "joint_lo": lo}


def test_score_weights_match_paper_formula():
    """a = 0.05·L_n + 0.95·L_o (λ weighs the residual; the authors' public code had it swapped)."""
    model = make_model(JointEncoderGAN2D, 1)
    x = rand_input(4, 1, PATCH, PATCH)
    out = model.score(x, 1, gen()).scores
    with torch.no_grad():
        z_hat = model.E(x)
        rec = model.generate(z_hat)
    ref = _ref_scores(x, z_hat, rec, 0.05)
    for name in SCORES:
        torch.testing.assert_close(out[name], ref[name], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["joint"], 0.05 * out["joint_ln"] + 0.95 * out["joint_lo"], rtol=1e-6, atol=1e-8)


def test_score_weights_with_known_terms(monkeypatch):
    """Hand-computable L_n, L_o via a monkeypatched reconstruction: the weights cannot be swapped."""
    model = make_model(JointEncoderGAN2D, 1)
    x = torch.linspace(0, 1, PATCH * PATCH).view(1, 1, PATCH, PATCH).repeat(2, 1, 1, 1)
    z_hat = torch.zeros(2, LATENT)
    z_hat[:, 0], z_hat[:, 1] = 3.0, 4.0  # ‖ẑ‖ = 5
    rec = torch.stack([2 * x[0] + 1, 1 - x[1]])  # w(rec) = w(x), and w(rec) = 1 − w(x)
    monkeypatch.setattr(model, "reconstruct", lambda inp: (z_hat, rec))
    s = model.score(x, 1, gen()).scores
    n = x[0].numel()
    lo = -5 / math.sqrt(LATENT)
    ln = torch.tensor([0.0, (2 * x[1] - 1).norm().item() / n])
    torch.testing.assert_close(s["joint_lo"], torch.full((2,), lo))
    torch.testing.assert_close(s["joint_ln"], ln, rtol=1e-5, atol=1e-7)
    expected = 0.05 * ln + 0.95 * lo
    swapped = 0.95 * ln + 0.05 * lo
    torch.testing.assert_close(s["joint"], expected, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(s["joint"], swapped)
    # λ is the param, and the helpers agree
    model.params.score_lambda = 1.0
    torch.testing.assert_close(model.score(x, 1, gen()).scores["joint"], s["joint_ln"])
    torch.testing.assert_close(combined_score(ln, torch.full((2,), lo), 0.05), expected)


def test_minmax_and_origin_helpers():
    x = torch.tensor([[[2.0, 4.0, 6.0]], [[5.0, 5.0, 5.0]]])  # second: constant image (zero range)
    w = minmax(x)
    torch.testing.assert_close(w[0, 0], torch.tensor([0.0, 0.5, 1.0]))
    assert torch.isfinite(w).all() and (w[1] == 0).all()
    assert torch.isfinite(residual_score(x, x.flip(-1))).all()
    torch.testing.assert_close(origin_score(torch.tensor([[3.0, 4.0, 0.0, 0.0]])), torch.tensor([-2.5]))


# ---------------------------------------------------------------- z normalisation and NaN guard


def test_unit_normalisation_of_codes():
    z = torch.randn(6, LATENT) * 5
    torch.testing.assert_close(unit_normalise(z).norm(dim=1), torch.ones(6))
    zero = torch.zeros(2, LATENT, requires_grad=True)
    u = unit_normalise(zero)
    assert (u == 0).all()
    u.sum().backward()
    assert torch.isfinite(zero.grad).all()

    model = make_model(JointEncoderGAN2D, 1)
    seen = []
    model.G.register_forward_pre_hook(lambda mod, args: seen.append(args[0].norm(dim=1)))
    with torch.no_grad():
        a, b = model.generate(z), model.generate(3.7 * z)
    torch.testing.assert_close(a, b)  # G sees only the direction of the code
    torch.testing.assert_close(seen[0], torch.ones(6))

    raw = make_model(JointEncoderGAN2D, 1, z_norm="none")
    with torch.no_grad():
        assert not torch.allclose(raw.generate(z), raw.generate(3.7 * z))


def _zero_encoder(model) -> None:
    lin = model.E.net.final[1]
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()


@pytest.mark.parametrize("z_norm", ["unit", "none"])
def test_zero_encoder_output_is_finite(z_norm):
    """E(x) = 0 exactly (the NaN case of the public code): scores and G/E gradients stay finite."""
    model = make_model(JointEncoderGAN2D, 1, z_norm=z_norm)
    _zero_encoder(model)
    x = rand_input(3, 1, PATCH, PATCH)
    out = model.score(x, 1, gen())
    for name in SCORES:
        assert torch.isfinite(out.scores[name]).all(), name
    assert (out.scores["joint_lo"] == 0).all()
    # the G+E step with zero codes on both sides (prior and encoder) has finite loss and gradients
    model.train()
    model.sample_z = lambda n, device: torch.zeros(n, LATENT)
    loss, _, enc = model.generator_encoder_loss(3, "cpu")
    assert torch.isfinite(loss) and torch.isfinite(enc)
    loss.backward()
    for p in list(model.E.parameters()) + list(model.G.parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all()


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("cls,shape", CASES, ids=IDS)
def test_training_schedule_and_all_networks_change(cls, shape):
    model = make_model(cls, shape[1]).train()
    x = rand_input(*shape, seed=1)
    opts = model.configure_optimizers(1e-3)
    assert len(opts) == 2
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    outs = [model.training_step(x, opts, 10.0) for _ in range(5)]
    for i, out in enumerate(outs):
        assert "loss" in out and out["loss"] == out["d_loss"]
        for k, v in out.items():
            assert isinstance(v, float) and math.isfinite(v), (i, k)
        assert ("enc_loss" in out) == (i == 4), i  # one G+E step after n_critic = 5 critic steps
    assert {"g_loss", "g_adv", "enc_loss", "wasserstein", "gp"} <= set(outs[4])
    assert int(model.steps) == 5
    after = model.state_dict()
    for net in ("D.", "G.", "E."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(net)), net
    with torch.no_grad():
        v = model.validation_loss(x)
        rec = model.generate(model.E(x))
    assert v.shape == (shape[0],) and torch.isfinite(v).all()
    torch.testing.assert_close(v, (x - rec).abs().flatten(1).mean(1))


def test_generator_step_updates_g_and_e_together_and_e_gets_encoder_gradients():
    model = make_model(JointEncoderGAN2D, 1).train()
    opts = model.configure_optimizers(1e-3)
    assert {id(p) for p in opts[1].param_groups[0]["params"]} == {id(p) for p in list(model.G.parameters()) + list(model.E.parameters())}
    assert {id(p) for p in opts[0].param_groups[0]["params"]} == {id(p) for p in model.D.parameters()}
    torch.manual_seed(3)
    _, adv, enc = model.generator_encoder_loss(4, "cpu")
    enc.backward()  # the image-space encoder term alone
    for p in model.E.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert sum(p.grad.abs().sum() for p in model.E.parameters()) > 0
    assert all(p.grad is not None for p in model.G.parameters())
    assert all(p.grad is None for p in model.D.parameters())


def test_encoder_loss_decreases_on_fixed_codes():
    """50 joint G+E steps (D fixed) on a fixed batch of prior codes reduce ‖G(z) − G(E(G(z)))‖₁."""
    model = make_model(JointEncoderGAN2D, 1, encoder_weight=10.0).train()
    opts = model.configure_optimizers(2e-3)
    z = torch.randn(8, LATENT, generator=torch.Generator().manual_seed(5))
    model.sample_z = lambda n, device: z
    enc = [model.generator_step(8, "cpu", opts[1], 10.0)["enc_loss"] for _ in range(50)]
    assert all(math.isfinite(e) for e in enc)
    assert sum(enc[-5:]) / 5 < 0.7 * sum(enc[:5]) / 5, (enc[:5], enc[-5:])


def test_z_norm_none_trains_and_scores():
    model = make_model(JointEncoderGAN2D, 1, z_norm="none", n_critic=1).train()
    x = rand_input(3, 1, PATCH, PATCH)
    opts = model.configure_optimizers(1e-3)
    for _ in range(2):
        out = model.training_step(x, opts, 10.0)
        assert "enc_loss" in out and all(math.isfinite(v) for v in out.values())
    s = model.eval().score(x, 1, gen()).scores
    assert all(torch.isfinite(s[n]).all() for n in SCORES)


# ---------------------------------------------------------------- checkpoint (batch invariance: test_detector_contract.py)


def test_checkpoint_round_trip_keeps_scores_and_schedule(tmp_path):
    model = make_model(JointEncoderGAN2D, 1).train()
    opts = model.configure_optimizers(1e-3)
    x = rand_input(2, 1, PATCH, PATCH)
    for _ in range(3):
        model.training_step(x, opts, 10.0)
    model.eval()
    save_checkpoint(tmp_path / "model.pt", model, {}, {})
    loaded, _ = load_checkpoint(tmp_path / "model.pt")
    assert isinstance(loaded, JointEncoderGAN2D) and int(loaded.steps) == 3
    a, b = model.score(x, 1, gen()).scores, loaded.score(x, 1, gen()).scores
    for name in SCORES:
        torch.testing.assert_close(a[name], b[name])


# ---------------------------------------------------------------- config


def test_config_validates_model_section(tmp_path):
    raw = {"model": {"name": "joint3d", "latent_dim": 16, "channels": [8, 16], "strides": [2, 2], "n_critic": 3,
                     "encoder_weight": 2, "score_lambda": 0.1, "z_norm": "none", "betas": [0.0, 0.9]}}
    cfg = validate(raw, base_dir=tmp_path)
    p = cfg.model
    assert isinstance(p, JointParams) and p.name == "joint3d" and p.latent_dim == 16 and p.n_critic == 3
    assert p.encoder_weight == 2.0 and isinstance(p.encoder_weight, float) and p.betas == (0.0, 0.9)
    assert isinstance(validate({"model": {"name": "joint2d"}}, base_dir=tmp_path).model, JointParams)  # defaults are valid


@pytest.mark.parametrize("model,needle", [
    ({"name": "joint3d", "lamda_gp": 5}, "lambda_gp"),  # misspelt → suggestion
    ({"name": "joint3d", "strides": [2, 2, 2], "channels": [4, 8, 16]}, "do not divide"),
    ({"name": "joint3d", "strides": [2, 2]}, "model.strides"),
    ({"name": "joint3d", "score_lambda": 1.5}, "score_lambda"),
    ({"name": "joint3d", "n_critic": 0}, "n_critic"),
    ({"name": "joint3d", "z_norm": "unti"}, "z_norm"),
])
def test_config_errors(tmp_path, model, needle):
    with pytest.raises(ConfigError, match=needle):
        validate({"model": model}, base_dir=tmp_path)
