"""Self-supervised detectors and simple baselines: synthetic-anomaly generator properties, the
rotation groups of GEOM, feature density, and the detector contract (shapes, scores, checkpoint
round trip) of size/knn/synth/geom in 2D and 3D."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.detector import Detector
from models.detectors.geom.model import apply_transform, cube_rotations, square_transforms
from models.detectors.synth.families import FILLS, SHAPES
from models.detectors.synth.model import SynthSpec, random_mask, shifted_source, synth_blend
from models.nets.feature_density import FeatureDensity
from models.zoo import DETECTORS

torch.set_num_threads(1)

PATCH = 28


def rand(*shape, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- synthetic-anomaly generator


@pytest.mark.parametrize("dims", [2, 3])
def test_blend_outside_mask_is_exact_and_inside_is_between(dims):
    size = 16 if dims == 3 else 28
    x = rand(6, 1, *[size] * dims)
    spec = SynthSpec(clean_fraction=0.3)
    for seed in range(5):
        out, target, info = synth_blend(x, torch.Generator().manual_seed(seed), spec)
        assert out.shape == x.shape and target.shape == (6, 1, *[size] * dims)
        m = info["masks"][:, None]
        outside = m.expand_as(x) == 0
        assert torch.equal(out[outside], x[outside])  # bit-exact outside the mask
        for i in range(6):
            if not info["altered"][i]:
                assert torch.equal(out[i], x[i]) and float(target[i].abs().max()) == 0
                continue
            j = int(info["source"][i])
            assert j != i  # another image of the batch
            # the source patch is the other image shifted; recover it from the blend: x' lies between x and p
            a = float(info["alpha"][i])
            assert torch.allclose(target[i, 0], a * info["masks"][i])
            inside = info["masks"][i] > 0
            assert inside.any()
            # convex combination: |x' − x| ≤ α·m·|p − x| ≤ |range|, and x' within [min, max] of the batch values
            lo, hi = x.min(), x.max()
            assert float(out[i][:, inside].min()) >= float(lo) - 1e-6 and float(out[i][:, inside].max()) <= float(hi) + 1e-6


def test_blend_inside_is_convex_combination_of_destination_and_source():
    x = rand(4, 1, 28, 28, seed=1)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    out, target, info = synth_blend(x, g1, SynthSpec(clean_fraction=0.0))
    # replay the same draws to obtain the source patches: the first draws per image are (clean?, j, shift, mask, α)
    for i in range(4):
        _ = torch.rand(1, generator=g2, dtype=torch.float64)
        j = (i + int(torch.randint(1, 4, (1,), generator=g2))) % 4
        p = shifted_source(x[j], g2)
        m, _ = random_mask(28, 2, g2, SynthSpec(clean_fraction=0.0))
        a = float(0.0 + 1.0 * torch.rand(1, generator=g2, dtype=torch.float64))
        assert j == int(info["source"][i]) and math.isclose(a, float(info["alpha"][i]))
        assert torch.equal(m, info["masks"][i])
        lo, hi = torch.minimum(x[i], p), torch.maximum(x[i], p)
        assert bool(((out[i] >= lo - 1e-6) & (out[i] <= hi + 1e-6)).all())
        assert torch.allclose(out[i], (1 - a * m) * x[i] + a * m * p, atol=1e-6)


def test_shifted_source_is_a_reflected_translation():
    src = rand(1, 28, 28, seed=3)
    p = shifted_source(src, torch.Generator().manual_seed(0))
    assert p.shape == src.shape
    # every row of the shifted patch is a (possibly mirrored) piece of the source: values come from src
    assert set(np.round(p.numpy().ravel(), 6)) <= set(np.round(src.numpy().ravel(), 6))


@pytest.mark.parametrize("dims", [2, 3])
def test_mask_size_distribution_matches_config(dims):
    size = 28 if dims == 2 else 24
    spec = SynthSpec(radius=(0.1, 0.3), blob=0.0, edge=(0.0, 0.0), centre_margin=0.5 - 1e-9)  # centred, hard, undeformed
    rng = torch.Generator().manual_seed(0)
    radii, ratio = [], []
    for _ in range(60 if dims == 2 else 30):
        m, draw = random_mask(size, dims, rng, spec)
        r = draw["radii"].numpy()
        assert (r >= 0.1 * size - 1e-9).all() and (r <= 0.3 * size + 1e-9).all()
        radii.append(r)
        ball = (math.pi if dims == 2 else 4 / 3 * math.pi) * np.prod(r)
        ratio.append(float((m > 0).sum()) / ball)
        assert float(m.min()) >= 0 and float(m.max()) <= 1
    radii = np.concatenate(radii)
    assert abs(radii.mean() / size - 0.2) < 0.02  # U(0.1, 0.3): mean 0.2
    assert abs(radii.std() / size - 0.2 / math.sqrt(12)) < 0.015
    assert 0.85 < np.median(ratio) < 1.15  # the support is the ellipse/ellipsoid of those radii


def test_mask_edges_and_blob_stay_within_bounds():
    spec = SynthSpec(radius=(0.2, 0.2), blob=0.3, edge=(0.5, 0.5), centre_margin=0.5 - 1e-9)
    m, draw = random_mask(28, 2, torch.Generator().manual_seed(1), spec)
    vals = m[m > 0]
    assert ((vals > 0) & (vals < 1)).any()  # a soft edge
    # ρ·(1 + b·noise) < 1 needs ρ < 1/(1 − b): nothing beyond 1/(1 − blob) of the radius
    yy, xx = torch.meshgrid(torch.arange(28) + 0.5, torch.arange(28) + 0.5, indexing="ij")
    dist = ((yy - 14) ** 2 + (xx - 14) ** 2).sqrt()
    assert float(dist[m > 0].max()) <= 0.2 * 28 / (1 - draw["blob"]) + 1e-6


def test_blend_is_deterministic_for_a_seed():
    x = rand(5, 1, 28, 28)
    a = synth_blend(x, torch.Generator().manual_seed(3), SynthSpec())
    b = synth_blend(x, torch.Generator().manual_seed(3), SynthSpec())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_clean_fraction_is_respected():
    x = rand(64, 1, 16, 16)
    _, _, info = synth_blend(x, torch.Generator().manual_seed(0), SynthSpec(clean_fraction=0.25))
    frac = 1 - info["altered"].float().mean().item()
    assert 0.1 < frac < 0.4


# ---------------------------------------------------------------- rotation groups


def _labelled(dims: int, n: int = 4) -> torch.Tensor:
    return torch.arange(n**dims, dtype=torch.float32).view(1, 1, *[n] * dims)  # every voxel distinct: a chiral cube


def _index_of(outs: list[torch.Tensor], y: torch.Tensor) -> int:
    hits = [i for i, o in enumerate(outs) if torch.equal(o, y)]
    assert len(hits) == 1
    return hits[0]


@pytest.mark.parametrize("dims,group,count", [(3, cube_rotations, 24), (2, square_transforms, 8)])
def test_transform_group(dims, group, count):
    ts = group()
    assert len(ts) == count
    assert ts[0] == (tuple(range(dims)), ())  # identity first
    x = _labelled(dims)
    outs = [apply_transform(x, t) for t in ts]
    assert len({tuple(o.flatten().tolist()) for o in outs}) == count  # all distinct
    for a in ts:  # closed under composition, and every inverse is in the set
        ya = apply_transform(x, a)
        for b in ts:
            _index_of(outs, apply_transform(ya, b))
        assert any(torch.equal(apply_transform(ya, b), x) for b in ts)


def test_cube_rotations_are_proper():
    x = _labelled(3)
    outs = [apply_transform(x, t) for t in cube_rotations()]
    for axis in (2, 3, 4):  # no mirror image of the chiral cube is reachable by a rotation
        assert not any(torch.equal(o, x.flip(axis)) for o in outs)
    assert not any(torch.equal(o, x.flip((2, 3, 4))) for o in outs)  # nor the point reflection
    # and the rotations by 90° about each axis are in the set
    for dims in ((2, 3), (2, 4), (3, 4)):
        _index_of(outs, torch.rot90(x, 1, dims))


def test_square_transforms_are_rotations_and_flips():
    x = _labelled(2)
    outs = [apply_transform(x, t) for t in square_transforms()]
    for k in range(4):
        assert _index_of(outs, torch.rot90(x, k, (2, 3))) < 4  # rotations first
        assert _index_of(outs, torch.rot90(x, k, (2, 3)).flip(3)) >= 4


# ---------------------------------------------------------------- feature density


def test_feature_density_knn_and_mahalanobis_match_sklearn():
    from sklearn.covariance import LedoitWolf
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(0)
    bank, q = rng.normal(size=(50, 6)), rng.normal(size=(7, 6))
    fd = FeatureDensity(k=5)
    fd.fit(bank)
    d, _ = NearestNeighbors(n_neighbors=5).fit(bank).kneighbors(q)
    assert np.allclose(fd.knn(torch.tensor(q, dtype=torch.float32)).numpy(), d.mean(1), atol=1e-4)
    lw = LedoitWolf().fit(bank)
    assert np.allclose(fd.maha(torch.tensor(q, dtype=torch.float32)).numpy(), np.sqrt(lw.mahalanobis(q)), atol=1e-3)
    fresh = FeatureDensity(k=5)
    fresh.load_state_dict(fd.state_dict())  # data-dependent buffer shapes load into a fresh module
    assert torch.equal(fresh.knn(torch.tensor(q, dtype=torch.float32)), fd.knn(torch.tensor(q, dtype=torch.float32)))


def test_feature_density_caps_k_and_reports_nan_unfitted():
    fd = FeatureDensity(k=10)
    assert torch.isnan(fd.knn(torch.zeros(2, 3))).all() and torch.isnan(fd.maha(torch.zeros(2, 3))).all()
    fd.fit(np.eye(3))
    assert torch.isfinite(fd.knn(torch.zeros(2, 3))).all()


# ---------------------------------------------------------------- size baseline


def test_size_radius_of_a_ball():
    from models.detectors.size.model import Size3D
    from models.detectors.size.params import SizeParams

    n = 28
    g = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32)] * 3, indexing="ij"))
    for r in (3.0, 6.0):
        ball = (((g - 14) ** 2).sum(0).sqrt() <= r).float() * 0.8 + 0.1
        model = Size3D(SizeParams(name="size3d"), 1, n).eval()
        s = model.score(ball[None, None], 1, torch.Generator()).scores["size"]
        assert abs(float(s[0]) - (r + 1)) <= 1.0  # EDT of a digital ball of radius r at its centre ≈ r + 1
    off = torch.full((1, 1, n, n, n), 0.1)
    off[..., :8, :8, :8] = 0.9  # dense tissue far from the centre does not count
    assert float(model.score(off, 1, torch.Generator()).scores["size"][0]) == 0.0


# ---------------------------------------------------------------- detector contract


NEW = ["size2d", "size3d", "knn2d", "knn3d", "synth2d", "synth3d", "geom2d", "geom3d"]
SMALL = {"synth": {"channels": [4, 8, 8], "strides": [2, 1], "num_res_units": 1}, "geom": {"channels": [4, 8], "strides": [2, 2], "num_res_units": 1}}


def make(name: str, channels: int, patch: int) -> Detector:
    cls = DETECTORS[name]
    return cls(cls.Params(name=name, **SMALL.get(name[:-2], {})), channels, patch)


@pytest.mark.parametrize("name", NEW)
def test_contract_shapes_training_and_checkpoint_round_trip(tmp_path, name):
    dims = 2 if name.endswith("2d") else 3
    patch = 28 if dims == 2 else 16
    channels = 3 if dims == 2 else 1
    torch.manual_seed(0)
    model = make(name, channels, patch)
    x = rand(10, channels, *[patch] * dims, seed=1)
    if model.sgd:
        opts = model.configure_optimizers(1e-3)
        model.train()
        model.on_epoch_start(0, 1)
        terms = model.training_step(x[:4], opts, 1.0)
        assert math.isfinite(terms["loss"])
        model.eval()
        assert model.validation_loss(x[:3]).shape == (3,)
        post = model.fit_after_training(x)
        assert post["bank_rows"] == 10
    else:
        model.fit_arrays(x)
        assert model.validation_loss(x[:3]).shape == (3,)
    model.eval()
    out = model.score(x[:5], 1, torch.Generator().manual_seed(0))
    assert set(out.scores) == set(model.score_names)
    for k, v in out.scores.items():
        assert v.shape == (5,) and torch.isfinite(v).all(), k
    assert out.residual.shape == (5, channels, *[patch] * dims)
    save_checkpoint(tmp_path / "model.pt", model, {"method": "window"}, {"epoch": 0})
    loaded, payload = load_checkpoint(tmp_path / "model.pt")
    assert payload["model_name"] == name
    again = loaded.score(x[:5], 1, torch.Generator().manual_seed(0))
    for k in out.scores:
        assert torch.allclose(out.scores[k], again.scores[k], atol=1e-5, equal_nan=True), k


@pytest.mark.parametrize("dims,views", [(2, 8), (3, 24)])
def test_geom_all_views_features(dims, views):
    cls = DETECTORS[f"geom{dims}d"]
    patch = 16
    model = cls(cls.Params(name=f"geom{dims}d", feature_views="all", **SMALL["geom"]), 1, patch).eval()
    x = rand(3, 1, *[patch] * dims)
    f = model.features(x)
    assert f.shape == (3, views * SMALL["geom"]["channels"][-1])
    model.fit_after_training(rand(6, 1, *[patch] * dims, seed=2))
    out = model.score(x, 1, torch.Generator())
    assert torch.isfinite(out.scores["feat_knn"]).all() and torch.isfinite(out.scores["feat_maha"]).all()


def test_trimmed_loss_leaves_out_the_samples_ranked_highest():
    from models.detectors.synth.model import trimmed_mean
    per = torch.tensor([0.1, 5.0, 0.3, 0.2, 9.0, 0.4, 0.5, 0.6, 0.7, 0.8])
    rank = torch.tensor([0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0])  # samples 3 and 6 rank highest
    assert float(trimmed_mean(per, rank, 0.0)) == pytest.approx(float(per.mean()))
    assert float(trimmed_mean(per, rank, 0.2)) == pytest.approx(np.mean([0.1, 5.0, 0.3, 9.0, 0.4, 0.6, 0.7, 0.8]))
    assert float(trimmed_mean(per[:1], rank[:1], 0.4)) == pytest.approx(0.1)  # at least one kept
    w = per.clone().requires_grad_(True)
    trimmed_mean(w, rank, 0.2).backward()  # the gradient reaches only the kept samples
    assert w.grad[3] == 0 and w.grad[6] == 0 and (w.grad[[0, 1, 2, 4, 5, 7, 8, 9]] > 0).all()


def test_synth_training_loss_is_trimmed_by_the_loss_on_unaltered_voxels():
    """``model.trim``: the training loss leaves out the images with the highest loss on their unaltered
    voxels; the validation loss still averages every image."""
    cls = DETECTORS["synth2d"]
    torch.manual_seed(0)
    model = cls(cls.Params(name="synth2d", trim=0.25, **SMALL["synth"]), 1, 28).train()
    x = rand(8, 1, 28, 28, seed=2)
    with torch.no_grad():
        per, native = model.pretext_losses(x, torch.Generator().manual_seed(5))
    assert per.shape == native.shape == (8,) and (native >= 0).all() and (native != per).any()
    model._rng = torch.Generator().manual_seed(5)
    loss = model.loss(x)[0].detach()
    kept = native.argsort()[:6]  # 8 − int(0.25·8) images with the lowest native loss
    assert float(loss) == pytest.approx(float(per[kept].mean()), rel=1e-5)
    assert float(loss) != pytest.approx(float(per.mean()), rel=1e-5)
    assert model.validation_loss(x).shape == (8,)


def test_synth_trim_is_validated(tmp_path):
    from conftest import load_config

    from pipeline.core.errors import ConfigError
    with pytest.raises(ConfigError, match=r"model\.trim: fraction of each batch left out, in \[0, 0\.5\)"):
        load_config("configs/xray.yaml", ["model.name=synth2d", "model.channels=[8,16]", "model.strides=[2]", "model.trim=0.6"])


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", FILLS)
def test_every_family_is_exact_outside_its_mask_and_stays_in_the_batch_range(dims, shape, kind):
    """Each (shape, fill) family alone: x' = x outside the mask, within the batch's intensity range inside,
    visibly changed somewhere, and the target is α·m."""
    size = 16 if dims == 3 else 28
    x = rand(4, 1, *[size] * dims, seed=2)
    spec = SynthSpec(clean_fraction=0.0, alpha=(1.0, 1.0), edge=(0.2, 0.2), shapes=(shape,), fills=(kind,))
    out, target, info = synth_blend(x, torch.Generator().manual_seed(11), spec)
    m = info["masks"][:, None]
    assert torch.equal(out[m.expand_as(x) == 0], x[m.expand_as(x) == 0])
    assert float(out.min()) >= float(x.min()) - 1e-6 and float(out.max()) <= float(x.max()) + 1e-6
    assert torch.allclose(target, m)
    assert all(d["shape"] == shape and d["fill"] == kind for d in info["draws"])
    assert float((out - x).abs().amax()) > 0.01


def test_box_fills_more_of_its_bounding_box_than_the_ellipsoid():
    """The two shape families differ as named: a hard, undeformed cube against a hard sphere of the same semi-axes."""
    spec = SynthSpec(radius=(0.25, 0.25), blob=0.0, edge=(0.0, 0.0), centre_margin=0.5 - 1e-9)
    vols = {s: float(random_mask(32, 3, torch.Generator().manual_seed(0), spec, s)[0].sum()) for s in SHAPES}
    r = 0.25 * 32
    assert abs(vols["ellipsoid"] / (4 / 3 * math.pi * r**3) - 1) < 0.1
    assert abs(vols["box"] / (2 * r) ** 3 - 1) < 0.15
    with pytest.raises(ValueError, match="unknown synthetic shape"):
        random_mask(8, 2, torch.Generator(), spec, "star")


def test_unknown_family_is_a_config_error():
    from models.detectors.synth.params import SynthParams

    errs = SynthParams(fills=["patch", "glow"], shapes=[]).check(type("C", (), {"train": type("T", (), {"patch_size": 28})()})())
    assert any("model.fills: unknown 'glow'" in e for e in errs) and any("model.shapes: empty" in e for e in errs)


def test_visibility_target_scales_the_mask_by_the_visible_change():
    """NSA's target: m · clip(mean |x' − x| over the mask / τ, 0, 1): an invisible change is not labelled, a strong one is m."""
    from models.detectors.synth.model import visibility_target
    x = torch.zeros(3, 1, 8, 8)
    masks = torch.zeros(3, 8, 8)
    masks[:, 2:6, 2:6] = 1.0
    altered = x.clone()
    altered[1, 0, 2:6, 2:6] = 0.05  # a quarter of τ
    altered[2, 0, 2:6, 2:6] = 0.9  # far above τ
    t = visibility_target(x, altered, masks, tau=0.2)
    assert t.shape == (3, 1, 8, 8)
    assert float(t[0].abs().max()) == 0.0
    assert torch.allclose(t[1, 0], 0.25 * masks[1], atol=1e-6)
    assert torch.equal(t[2, 0], masks[2])


def test_synth_visibility_target_and_degradation_in_the_pretext_loss():
    """``model.target: visibility`` and the degradation change the training loss, deterministically for a generator;
    a degradation of 0 is the identity."""
    from models.detectors.synth.model import degrade
    x = rand(4, 1, 16, 16, 16, seed=3)
    assert degrade(x, torch.Generator().manual_seed(0), 0.0, 0.0) is x
    d1, d2 = (degrade(x, torch.Generator().manual_seed(0), 1.0, 0.05) for _ in range(2))
    assert torch.equal(d1, d2) and not torch.equal(d1, x)
    cls = DETECTORS["synth3d"]
    losses = {}
    for target, noise in (("mask", 0.0), ("visibility", 0.0), ("visibility", 0.05)):
        torch.manual_seed(0)
        model = cls(cls.Params(name="synth3d", target=target, degrade_noise=noise, **SMALL["synth"]), 1, 16)
        with torch.no_grad():
            losses[target, noise] = model.pretext_losses(x, torch.Generator().manual_seed(5))[0]
    assert len({tuple(v.tolist()) for v in losses.values()}) == 3


def test_centre_below_puts_every_mask_on_a_dark_voxel():
    """``model.centre_below``: each mask is centred on a voxel darker than the threshold (within the margin)."""
    x = torch.ones(6, 1, 24, 24, 24)
    x[:, :, 15, 8, 12] = 0.0  # one dark voxel per image
    spec = SynthSpec(clean_fraction=0.0, centre_below=0.5, fills=("constant",))
    _, _, info = synth_blend(x, torch.Generator().manual_seed(3), spec)
    for d in info["draws"]:
        assert torch.all((d["centre"] - torch.tensor([15.0, 8.0, 12.0])).abs() < 1.0)
    spec_none = SynthSpec(clean_fraction=0.0, centre_below=-1.0, fills=("constant",))  # no voxel qualifies: anywhere
    _, _, info = synth_blend(x, torch.Generator().manual_seed(3), spec_none)
    assert len({tuple(d["centre"].tolist()) for d in info["draws"]}) == 6


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_training_precision_runs_the_forward_pass_in_that_dtype(precision, dtype):
    """``train.precision``: the convolutions of a training step run in bfloat16 under bf16; the weights stay float32 and move."""
    cls = DETECTORS["synth3d"]
    torch.manual_seed(0)
    model = cls(cls.Params(name="synth3d", **SMALL["synth"]), 1, 16).train()
    model.train_precision = precision
    seen = []
    conv = next(m for m in model.net.modules() if isinstance(m, torch.nn.Conv3d))
    conv.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    before = conv.weight.detach().clone()
    step = model.training_step(rand(4, 1, 16, 16, 16, seed=1), model.configure_optimizers(1e-3), 10.0)
    assert seen and set(seen) == {dtype} and math.isfinite(step["loss"])
    assert conv.weight.dtype == torch.float32 and not torch.equal(conv.weight, before)
