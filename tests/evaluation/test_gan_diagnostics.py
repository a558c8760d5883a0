"""evaluation.gan_diagnostics on tiny untrained models and on arrays with known answers."""

from __future__ import annotations

import html
import json

import numpy as np
import pytest
import torch
from conftest import tiny_gan

from evaluation import gan_diagnostics as gd

pytestmark = pytest.mark.usefixtures("one_thread")

P = 28


def tiny(name: str, **kw):
    return tiny_gan(name, P, **kw).eval()


def blobs(n: int, seed: int, shift: float = 0.0, dims: int = 2) -> np.ndarray:
    """Images with a bright square at a random place (a varied but simple 'normal' class)."""
    rng = np.random.default_rng(seed)
    x = np.full((n, 1, *[P] * dims), 0.1 + shift, np.float32)
    for i in range(n):
        a, b = rng.integers(2, P - 10, 2)
        if dims == 2:
            x[i, 0, a : a + 8, b : b + 8] = 0.9
        else:
            x[i, 0, a : a + 8, b : b + 8, 10:18] = 0.9
    return np.clip(x + rng.normal(0, 0.02, x.shape).astype(np.float32), 0, 1)


# ------------------------------------------------------------------ statistics with known answers


def test_mmd2_near_zero_for_one_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 5)), rng.normal(size=(300, 5))
    c = rng.normal(size=(300, 5)) + 1.5
    assert abs(gd.mmd2(a, b, 2.0)) < 0.01
    assert gd.mmd2(a, c, 2.0) > 0.1
    assert gd.mmd2(a, c, 2.0) == pytest.approx(gd.mmd2(c, a, 2.0))


def test_knn_precision_recall_identical_collapsed_and_disjoint():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 3))
    p, r = gd.knn_precision_recall(real, real.copy(), k=3)
    assert p == 1.0 and r == 1.0
    collapsed = np.repeat(real[:1], 50, 0)  # every fake is one real point: precise, no recall
    p, r = gd.knn_precision_recall(real, collapsed, k=3)
    assert p == 1.0 and r < 0.1
    p, r = gd.knn_precision_recall(real, real + 100.0, k=3)
    assert p == 0.0 and r == 0.0


def test_sample_quality_reference_matches_a_perfect_generator_and_flags_mode_collapse():
    train, val = blobs(400, 0), blobs(100, 1)
    perfect = gd.sample_quality(blobs(400, 2), val, train, n_components=16)
    assert abs(perfect["gen"]["mmd2"] - perfect["train_ref"]["mmd2"]) < 0.02
    assert perfect["gen"]["recall"] > 0.7 and perfect["gen"]["precision"] > 0.7
    collapsed = gd.sample_quality(np.repeat(blobs(1, 3), 400, 0), val, train, n_components=16)
    assert collapsed["gen"]["diversity"] < 1e-6 < collapsed["train_ref"]["diversity"]
    assert collapsed["gen"]["recall"] < 0.1
    assert collapsed["mmd2_excess"] > 0.1
    dim = gd.sample_quality(blobs(400, 2, shift=-0.1), val, train, n_components=16)  # darker background
    assert dim["gen"]["mean_intensity"] < dim["val_mean_intensity"] - 0.05
    assert dim["gen"]["nn_l1"] > perfect["gen"]["nn_l1"]
    json.dumps(perfect)  # JSON-able


# ------------------------------------------------------------------ adapters on tiny models


@pytest.mark.parametrize("name", ["anogan2d", "anogan3d", "fanogan2d", "joint2d", "alphagan2d", "vae2d"])
def test_generate_samples_shape_range_and_seed(name):
    m = tiny(name)
    a = gd.generate_samples(m, 5, seed=3)
    dims = m.spatial_dims
    assert a.shape == (5, 1, *[P] * dims) and a.min() >= 0 and a.max() <= 1
    assert np.array_equal(a, gd.generate_samples(m, 5, seed=3))
    assert not np.array_equal(a, gd.generate_samples(m, 5, seed=4))


def test_prior_follows_the_models_latent_prior():
    z = gd.sample_prior(tiny("anogan2d", latent_prior="uniform"), 2000)
    assert z.min() >= -1 and z.max() <= 1 and abs(z.std().item() - 1 / np.sqrt(3)) < 0.02
    z = gd.sample_prior(tiny("anogan2d"), 2000)
    assert abs(z.std().item() - 1.0) < 0.03


def test_sample_grid_writes_png_for_2d_and_3d(tmp_path):
    for name, dims in (("anogan2d", 2), ("anogan3d", 3)):
        out = gd.sample_grid(tiny(name), blobs(8, 0, dims=dims), tmp_path / f"{name}.png", n=4)
        assert (tmp_path / f"{name}.png").stat().st_size > 1000 and out["sample_grid"].endswith(".png")


def test_search_trace_records_every_step_and_does_not_change_the_search():
    m = tiny("anogan2d", search_steps=15, search_lr=0.1)
    x = torch.from_numpy(blobs(3, 0))
    trace, res = gd.search_trace(m, x, seed=0)
    assert len(trace) == 15 and np.all(np.isfinite(trace))
    z_plain, terms = m.search(x, torch.Generator().manual_seed(0))
    assert torch.allclose(z_plain, res["z"]) and torch.allclose(terms["anogan"], res["anogan"])
    trace, _ = gd.search_trace(m, x, seed=0, search_steps=4)
    assert len(trace) == 4 and m.params.search_steps == 15  # overrides are temporary


def test_search_diagnostics_known_code_case_and_figure(tmp_path):
    m = tiny("anogan2d", search_steps=60, search_lr=0.1)
    out = gd.search_diagnostics(m, blobs(8, 0), tmp_path / "s.png", n=8)
    assert out["steps"] == 60
    assert out["own"]["end"] < out["own"]["start"]  # the search makes progress on G's own samples
    assert out["own"]["z_rel_error"] >= 0 and np.isfinite(out["own_over_real"])
    assert (tmp_path / "s.png").exists() and (tmp_path / "s_matches.png").exists()


def test_encoder_diagnostics_match_a_direct_computation(tmp_path):
    m = tiny("joint2d")
    val = blobs(20, 0)
    out = gd.encoder_diagnostics(m, val, tmp_path / "r.png", n_own=64)
    with torch.no_grad():
        x = torch.from_numpy(val)
        direct = (x - m.generate(m.E(x))).abs().mean().item()
    assert out["val_l1"] == pytest.approx(direct, rel=1e-5)
    assert out["mean_image_l1"] > 0 and out["norm_prior"]["mean"] == pytest.approx(1.0, abs=0.15)
    assert (tmp_path / "r.png").exists()
    with pytest.raises(ValueError):
        gd.encoder_diagnostics(tiny("anogan2d"), val)


def test_run_all_picks_the_diagnostics_that_apply(tmp_path):
    tr, va = blobs(60, 0), blobs(20, 1)
    a = gd.run_all(tiny("anogan2d", search_steps=5), tr, va, tmp_path, "a", n_samples=60, search_n=4)
    assert {"quality", "search"} <= set(a) and "encoder" not in a
    j = gd.run_all(tiny("joint2d"), tr, va, tmp_path, "j", n_samples=60)
    assert {"quality", "encoder"} <= set(j) and "search" not in j
    json.dumps(a), json.dumps(j)


# ------------------------------------------------------------------ the evaluate stage


def _arrays(path, n: int = 32, size: int = 16) -> None:
    """Blobs at random places (normal) and blobs with a bright corner square (anomalous), uint8 2D arrays."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, size)] * 2, indexing="ij"))
    images, labels = [], []
    for i in range(n):
        c = rng.uniform(-0.3, 0.3, 2).reshape(2, 1, 1)
        img = 200 * np.exp(-((grid - c) ** 2).sum(0) / 0.3)
        if i % 4 == 0:
            img[2:6, 2:6] = 255
        images.append(img[None])
        labels.append(int(i % 4 == 0))
    patients = np.array([f"p{i // 2}" for i in range(n)])
    np.savez(path, images=np.clip(np.stack(images), 0, 255).astype(np.uint8), labels=np.array(labels), patient=patients)


def _run(tmp_path, model: dict, score: str):
    from conftest import validate

    from pipeline.runner import STAGE_NAMES, run_stages

    tmp_path.mkdir(parents=True, exist_ok=True)
    _arrays(tmp_path / "data.npz")
    raw = {
        "run": {"seed": 0, "threads": 1},
        "ingest": {"format": "arrays", "input": str(tmp_path / "data.npz"),
                   "arrays": {"images": "images", "labels": "labels", "patient_id": "patient", "spatial_dims": 2}},
        "extract": {"cube_size": 16, "hu_window": [0, 255]},
        "split": {"method": "holdout", "test_fraction": 0.34, "val_fraction": 0.25},
        "model": model,
        "train": {"epochs": 1, "batch_size": 8, "patch_size": 16},
        "score": {"mc_samples": 2, "batch_size": 8},
        "evaluate": {"score": score, "bootstrap": 20, "figures": True},
    }
    run_dir = tmp_path / "run"
    manifest = run_stages(validate(raw, base_dir=tmp_path), run_dir, list(STAGE_NAMES), log=lambda m: None)
    assert all(manifest.stages[s]["status"] == "done" for s in STAGE_NAMES)
    return run_dir, json.loads((run_dir / "metrics.json").read_text()), (run_dir / "report.html").read_text()


def test_evaluate_writes_gan_diagnostics_for_a_gan_and_nothing_for_other_models(tmp_path):
    small = {"latent_dim": 4, "channels": [4, 8], "strides": [2, 2]}
    run_dir, metrics, report = _run(tmp_path / "a", {"name": "anogan2d", "arch": "dcgan", "search_steps": 3, "val_bank": 8, **small}, "anogan")
    g = metrics["gan_diagnostics"]
    assert {"quality", "search"} <= set(g) and "encoder" not in g
    assert g["search"]["steps"] == 3 and g["quality"]["n_val"] >= 2
    for name in ("gan_samples", "gan_search", "gan_search_matches"):
        assert (run_dir / f"{name}.png").stat().st_size > 1000, name
        assert html.escape(gd.FIGURES[name]) in report  # the caption: the figure is embedded in report.html
    assert "<h2>GAN diagnostics</h2>" in report and not (run_dir / "gan_recon.png").exists()
    run_dir, metrics, report = _run(tmp_path / "j", {"name": "joint2d", **small}, "joint")
    assert "encoder" in metrics["gan_diagnostics"] and (run_dir / "gan_recon.png").exists() and html.escape(gd.FIGURES["gan_recon"]) in report
    run_dir, metrics, report = _run(tmp_path / "p", {"name": "pca2d", "n_components": 3}, "pca_recon")
    assert "gan_diagnostics" not in metrics and not list(run_dir.glob("gan_*.png")) and "GAN diagnostics" not in report
