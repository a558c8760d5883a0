"""The detector contract, for every registered model: a model gets these tests by being registered.

- shapes: a fit (closed form) or a training step, then scores named exactly as the catalog says,
  one finite value per sample, and a residual map shaped like the input, in the model's 2D or 3D;
- batch invariance: a sample scores the same alone as inside a batch (common random numbers);
- inference: scoring leaves no gradient on any parameter and returns tensors without a graph;
- determinism: the same seed gives the same weights and scores, another seed other weights;
- checkpoint round trip: save → load in a fresh process-like rebuild gives identical scores;
- non-finite loss: training stops, says so, and keeps the last good checkpoint (SGD models);
- end to end: trained through the stages from a config, then the model folder alone scores new
  data with ``pipeline score --model`` and reproduces the run's own scores.

Each family's smallest parameters are its ``Params.tiny()`` (``models/detectors/<family>/params.py``),
so a new family folder is covered without an edit here. ``VARIANTS``
adds network variants that change the model's structure (the GAN families' ``arch: dcgan`` with the
benchmark configs' settings); the in-process contract tests run on them too, as ``<name>:dcgan``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import validate

from models import registry
from models.catalog import MODELS as CATALOG
from models.checkpoint import load_checkpoint, save_checkpoint
from models.training import fit
from models.zoo import DETECTORS, build
from pipeline import cli
from pipeline.core.validation import to_plain
from pipeline.runner import STAGE_NAMES, run_stages

PATCH = 8
VARIANTS = {"dcgan": {
    "anogan": {"arch": "dcgan", "search_normalise": True, "val_bank": 4},
    "fanogan": {"arch": "dcgan", "d_norm": "layer"},
    "joint": {"arch": "dcgan", "z_norm": "none", "e_norm": "layer", "encoder_weight": 10.0},  # the benchmark's "j4" design
    "bigan": {"arch": "dcgan", "e_norm": "instance"},
    "alphagan": {"arch": "dcgan"},
}}
NO_FLIPS = {"geom"}  # random flips would make GEOM's transformation classes ambiguous (its config check)
NAMES = sorted(DETECTORS)
CASES = NAMES + [f"{n}:{v}" for v, fams in VARIANTS.items() for n in NAMES if CATALOG[n].family in fams]
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_params(name: str) -> dict:
    """The config ``model`` section of ``name``'s ``Params.tiny()`` (all but its name)."""
    return {k: v for k, v in to_plain(CATALOG[name].params.tiny()).items() if k != "name"}


def tiny(case: str, patch: int = PATCH, channels: int = 1, seed: int = 0):
    """A fitted-or-stepped tiny detector ``case`` (a registry name, or ``<name>:<variant>``) and a batch of inputs for it."""
    name, _, variant = case.partition(":")
    spec = CATALOG[name]
    train = {"patch_size": patch, **({"flips": False} if spec.family in NO_FLIPS else {})}
    extra = VARIANTS[variant][spec.family] if variant else {}
    params = validate({"model": {"name": name, **tiny_params(name), **extra}, "train": train}, base_dir=".").model
    torch.manual_seed(seed)
    model = build(name, params, channels, patch)
    x = torch.rand(5, channels, *[patch] * spec.spatial_dims, generator=torch.Generator().manual_seed(11))
    if model.sgd:
        model.training_step(x, model.configure_optimizers(1e-3), 10.0)
    else:
        model.fit_arrays(x)
    model.fit_after_training(x)
    return model.eval(), x


def scores_of(model, x, seed: int = 7) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.score(x, 3, torch.Generator().manual_seed(seed)).scores.items()}


def test_every_family_folder_registers_its_detectors_once():
    assert set(DETECTORS) == set(CATALOG)  # each models/detectors/<family>/ has a params.py and a model.py
    for name, cls in DETECTORS.items():
        assert cls.registry_name == name and cls.Params is CATALOG[name].params and cls.spatial_dims == CATALOG[name].spatial_dims
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("vae3d")(DETECTORS["vae3d"])


@pytest.mark.parametrize("case", CASES)
def test_shapes_and_score_names_follow_the_catalog(case):
    model, x = tiny(case)
    name = case.partition(":")[0]
    assert model.spatial_dims == CATALOG[name].spatial_dims and model.score_names == CATALOG[name].scores
    out = model.score(x, 3, torch.Generator().manual_seed(7))
    assert set(out.scores) == set(CATALOG[name].scores)
    for k, v in out.scores.items():
        assert v.shape == (len(x),) and torch.isfinite(v).all(), k
    assert out.residual.shape == x.shape and torch.isfinite(out.residual).all()


@pytest.mark.parametrize("case", CASES)
def test_batch_invariance(case):
    model, x = tiny(case)
    full = scores_of(model, x)
    for i in (0, 3):
        alone = scores_of(model, x[i : i + 1])
        for k in full:
            torch.testing.assert_close(alone[k][0], full[k][i], rtol=1e-4, atol=1e-5, msg=f"{case} {k}[{i}]")


@pytest.mark.parametrize("case", CASES)
def test_scoring_builds_no_graph_and_leaves_no_gradient(case):
    model, x = tiny(case)
    model.zero_grad(set_to_none=True)
    out = model.score(x, 3, torch.Generator().manual_seed(7))
    assert all(not v.requires_grad for v in out.scores.values()) and not out.residual.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad == model.sgd for p in model.parameters())  # a latent search restores what it froze


@pytest.mark.parametrize("case", CASES)
def test_same_seed_same_model_and_scores(case):
    (a, x), (b, _), (c, _) = tiny(case, seed=3), tiny(case, seed=3), tiny(case, seed=4)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    sa, sb = scores_of(a, x), scores_of(b, x)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    if a.sgd:
        assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items() if v.is_floating_point())


@pytest.mark.parametrize("case", CASES)
def test_checkpoint_round_trip(tmp_path, case):
    model, x = tiny(case)
    save_checkpoint(tmp_path / "model.pt", model, {"hu_window": [0.0, 1.0], "mode": "window", "cube_size": PATCH}, {"seed": 0})
    loaded, payload = load_checkpoint(tmp_path)
    assert type(loaded) is type(model) and loaded.params == model.params and payload["model_name"] == case.partition(":")[0]
    a, b = scores_of(model, x), scores_of(loaded, x)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("name", [n for n in NAMES if DETECTORS[n].sgd])
def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, name, monkeypatch):
    spec = CATALOG[name]
    train = {"epochs": 5, "batch_size": 4, "patch_size": PATCH, "patience": 100, **({"flips": False} if spec.family in NO_FLIPS else {})}
    cfg = validate({"model": {"name": name, **tiny_params(name)}, "train": train}, base_dir=tmp_path)
    model = build(name, cfg.model, 1, PATCH)
    calls = {"n": 0}
    step = model.training_step

    def flaky(x, opts, mgn):
        calls["n"] += 1
        out = step(x, opts, mgn)
        if calls["n"] > 4:  # epoch 2 onwards (2 batches per epoch)
            out["loss"] = float("nan")
        return out

    monkeypatch.setattr(model, "training_step", flaky)
    data = np.random.default_rng(0).random((8, 1, *[PATCH + 2] * spec.spatial_dims), dtype=np.float32)
    summary = fit(model, data, data[:4], cfg, tmp_path, {"hu_window": [0, 1], "mode": "window"})
    assert summary["diverged"] and "non-finite training loss at epoch 2" in summary["stop_reason"]
    assert list(pd.read_csv(tmp_path / "curves.csv").epoch) == [0, 1]
    _, payload = load_checkpoint(tmp_path)
    assert payload["epoch"] in (0, 1) and np.isfinite(payload["val_loss"]) and not (tmp_path / "train_state.pt").exists()


def _dataset(path, dims: int, channels: int, n: int = 36, size: int = 28, seed: int = 0) -> None:
    """Smooth blobs (normal) and blobs with a bright square (anomalous), shaped like real inputs."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, size)] * dims, indexing="ij"))
    images, labels = [], []
    for i in range(n):
        c = rng.uniform(-0.3, 0.3, dims)
        img = 200 * np.exp(-((grid - c.reshape(-1, *[1] * dims)) ** 2).sum(0) / 0.3)
        label = int(i % 4 == 0)
        if label:
            img[tuple(slice(4, 10) for _ in range(dims))] = 255
        images.append(np.repeat(img[None], channels, 0))
        labels.append(label)
    np.savez(path, images=np.clip(np.stack(images), 0, 255).astype(np.uint8), labels=np.array(labels),
             patient=np.array([f"p{i // 2}" for i in range(n)]))


@pytest.mark.parametrize("name", NAMES)
def test_trains_through_the_stages_and_the_model_folder_alone_scores_new_data(tmp_path, name):
    dims = CATALOG[name].spatial_dims
    channels = 3 if dims == 2 else 1
    data = tmp_path / "data.npz"
    _dataset(data, dims, channels)
    raw = {
        "run": {"seed": 0, "threads": 1},
        "ingest": {"format": "arrays", "input": str(data),
                   "arrays": {"images": "images", "labels": "labels", "patient_id": "patient", "spatial_dims": dims}},
        "extract": {"cube_size": 28, "hu_window": [0, 255]},
        "split": {"method": "holdout", "test_fraction": 0.34, "val_fraction": 0.25},
        "model": {"name": name},
        "train": {"epochs": 1, "batch_size": 8, "patch_size": 28, **({"flips": False} if CATALOG[name].family in NO_FLIPS else {})},
        "score": {"mc_samples": 2, "batch_size": 8},
        "evaluate": {"score": CATALOG[name].scores[0], "bootstrap": 20, "figures": False},
    }
    cfg = validate(raw, base_dir=tmp_path)
    run_dir = tmp_path / "run"
    manifest = run_stages(cfg, run_dir, list(STAGE_NAMES), log=lambda m: None)
    assert all(manifest.stages[s]["status"] == "done" for s in STAGE_NAMES)
    scores = pd.read_csv(run_dir / "scores.csv")
    for col in CATALOG[name].scores:
        assert col in scores.columns and np.isfinite(scores[col]).all(), col
    with np.load(run_dir / "residuals.npz") as z:
        assert z["residual"].shape == (len(scores), channels, *[28] * dims)
    assert "auroc" in json.loads((run_dir / "metrics.json").read_text())["primary"]
    new = tmp_path / "new"
    assert cli.main(["score", "--model", str(run_dir / "model"), "--input", str(data), "--out", str(new)]) == 0
    again = pd.read_csv(new / "scores.csv").set_index("sample_id").loc[scores["sample_id"]]
    for col in CATALOG[name].scores:
        np.testing.assert_allclose(again[col].to_numpy(), scores[col].to_numpy(), rtol=1e-5, atol=1e-6, err_msg=col)
