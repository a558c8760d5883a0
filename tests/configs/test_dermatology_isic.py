"""configs/dermatology_isic2018.yaml on a tiny SYNTHETIC fixture in the ISIC 2018 Task 3 layout.

No real dermatology data are available here (ISIC images are not redistributable with the
product), so this checks the layout and the plumbing, not detection quality: RGB JPEGs named
ISIC_xxxxxxx.jpg, a ground-truth CSV with an ``image`` column and one-hot MEL, NV, BCC, AKIEC,
BKL, DF, VASC columns; nevi are normal. Checked: RGB keeps 3 channels end to end, per-class
AUROC equals scikit-learn's on the scores, and the z-score statistics come from the training
nevi only and travel in the checkpoint.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, load_config
from PIL import Image
from sklearn.metrics import roc_auc_score

from evaluation.metrics import per_class_auroc
from models.checkpoint import read_checkpoint
from pipeline.core.artifacts import read_raw_cubes
from pipeline.runner import STAGE_NAMES, run_stages
from preprocessing.grid_shards import read_all_grids

CLASSES = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]


def _isic_fixture(root, counts: dict[str, int], seed: int = 0) -> None:
    """RGB lesions on skin-coloured background: nevi are round and brown; the other classes
    differ in colour or shape, so a detector has something to find."""
    rng = np.random.default_rng(seed)
    (root / "input").mkdir(parents=True)
    yy, xx = np.mgrid[:48, :64]
    rows, i = [], 24306
    colour = {"NV": (120, 70, 40), "MEL": (40, 20, 30), "BCC": (200, 120, 160), "AKIEC": (190, 60, 50)}
    for cls, n in counts.items():
        for _ in range(n):
            img = np.zeros((48, 64, 3)) + np.array([225, 180, 160]) + rng.normal(0, 6, (48, 64, 3))
            cy, cx = 24 + rng.normal(0, 2), 32 + rng.normal(0, 2)
            r = rng.uniform(9, 12) * (1 + (0.4 * np.sin(5 * np.arctan2(yy - cy, xx - cx)) if cls == "MEL" else 0))
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = colour[cls]
            name = f"ISIC_{i:07d}"
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "input" / f"{name}.jpg", quality=95)
            rows.append({"image": name, **{c: float(c == cls) for c in CLASSES}})
            i += 1
    pd.DataFrame(rows).sample(frac=1, random_state=seed).to_csv(root / "GroundTruth.csv", index=False)


def test_per_class_auroc_matches_sklearn_on_a_toy_table():
    classes = np.array(["NV"] * 6 + ["MEL"] * 3 + ["BCC"] * 3)
    labels = (classes != "NV").astype(int)
    scores = np.array([0.1, 0.4, 0.35, 0.2, 0.8, 0.3, 0.9, 0.5, 0.25, 0.33, 0.6, 0.05])
    out = per_class_auroc(classes, labels, scores)
    for c in ("MEL", "BCC"):
        sel = (classes == "NV") | (classes == c)
        assert out[c]["auroc"] == pytest.approx(roc_auc_score(labels[sel], scores[sel]))
        assert out[c]["n"] == 3
    assert set(out) == {"MEL", "BCC"}


def test_dermatology_config_on_synthetic_isic_layout(tmp_path, one_thread):
    _isic_fixture(tmp_path, {"NV": 30, "MEL": 5, "BCC": 5, "AKIEC": 4})
    cfg = load_config(ROOT / "configs" / "dermatology_isic2018.yaml", [
        f"ingest.input={tmp_path / 'input'}", f"ingest.images.labels={tmp_path / 'GroundTruth.csv'}",
        "ingest.images.pixel_spacing_mm=0.5",  # 64x48 px → 32x24 on the 1 mm grid
        "extract.cube_size=24", "train.patch_size=16", "train.epochs=2", "train.batch_size=8", "run.threads=1",
        "model.channels=[8, 16]", "model.strides=[2, 2]", "model.latent_dim=8", "score.mc_samples=3", "evaluate.bootstrap=20",
        "evaluate.overlay_top_n=3"])
    run = tmp_path / "run"
    manifest = run_stages(cfg, run, list(STAGE_NAMES), log=lambda m: None)
    assert all(manifest.stages[s]["status"] == "done" for s in STAGE_NAMES)
    assert manifest.stages["ingest"]["errors"] == []
    # RGB end to end: ingested grid, extracted crops, residual maps and reconstructions keep 3 channels
    _, grids = read_all_grids(run)
    assert len(grids) == 44 and all(g.shape == (3, 24, 32) for g in grids)
    ids, raw = read_raw_cubes(run)
    assert raw.shape == (44, 3, 24, 24)
    assert (np.ptp(raw, axis=(2, 3)) > 0).all() and not np.allclose(raw[:, 0], raw[:, 2])  # real colour, not grey copies
    with np.load(run / "residuals.npz") as z:
        assert z["residual"].shape == (44, 3, 16, 16) and z["reconstruction"].shape == (44, 3, 16, 16)
    # one-hot classes and nevus-as-normal
    samples = pd.read_csv(run / "samples.csv")
    assert samples.groupby("class")["label"].agg(["min", "max"]).to_dict("index") == {
        "AKIEC": {"min": 1, "max": 1}, "BCC": {"min": 1, "max": 1}, "MEL": {"min": 1, "max": 1}, "NV": {"min": 0, "max": 0}}
    # per-class AUROC (Lu & Xu 2018, Table 2) equals scikit-learn's on the written scores
    scores = pd.read_csv(run / "scores.csv")
    test = scores[scores["split"] == "test"]
    assert set(test.loc[test.label == 1, "class"]) == {"MEL", "BCC", "AKIEC"}  # anomalies_to_test
    metrics = json.loads((run / "metrics.json").read_text())
    per_class = metrics["scores"]["elbo"]["per_class"]
    assert set(per_class) == {"MEL", "BCC", "AKIEC"}
    for c, m in per_class.items():
        sel = test[(test.label == 0) | (test["class"] == c)]
        assert m["auroc"] == pytest.approx(roc_auc_score(sel["label"], sel["elbo"]))
    # z-score statistics: mean/std per channel of the training nevi only, stored in the checkpoint
    splits = pd.read_csv(run / "splits.csv")
    ids = list(ids)
    train_normals = [ids.index(s) for s in splits.loc[(splits.split == "train") & (splits.label == 0), "sample_id"]]
    norm = read_checkpoint(run / "model" / "model.pt")["normalisation"]
    assert norm["mode"] == "zscore"
    np.testing.assert_allclose(norm["mean"], raw[train_normals].mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(norm["std"], raw[train_normals].std(axis=(0, 2, 3)), rtol=1e-6)
    assert not np.allclose(norm["mean"], raw.mean(axis=(0, 2, 3)), rtol=1e-3)  # anomalies and test data did not leak in
    assert "Per-class AUROC" in (run / "report.html").read_text()
    overlays = sorted(p.name for p in (run / "overlays").glob("*.png"))
    assert len(overlays) == 6 and overlays[0].startswith("normal01_ISIC_") and overlays[-1].startswith("top03_ISIC_")


def test_dermatology_config_runs_as_written_on_the_ham10000_layout(tmp_path):
    """configs/dermatology.yaml with only the two path overrides: metadata.csv (lesion_id, image_id, dx, ...),
    128 px short side, splits grouped by lesion."""
    _isic_fixture(tmp_path, {"NV": 40, "MEL": 4, "BCC": 4})
    truth = pd.read_csv(tmp_path / "GroundTruth.csv")
    dx = pd.Series(truth[CLASSES].idxmax(axis=1).str.lower().to_numpy())
    lesion = dx + "_" + (dx.groupby(dx).cumcount() // 2).astype(str)  # two images per lesion, one diagnosis each
    meta = pd.DataFrame({"lesion_id": lesion, "image_id": truth["image"], "dx": dx,
                         "dx_type": "histo", "age": 50.0, "sex": "female", "localization": "back"})
    meta.to_csv(tmp_path / "metadata.csv", index=False)
    paths = [f"ingest.input={tmp_path / 'input'}", f"ingest.images.labels={tmp_path / 'metadata.csv'}"]
    cfg = load_config(ROOT / "configs" / "dermatology.yaml", paths)
    run = tmp_path / "run"
    manifest = run_stages(cfg, run, ["ingest", "extract", "split"], log=lambda m: None)
    assert all(manifest.stages[s]["status"] == "done" for s in ("ingest", "extract", "split"))
    table, grids = read_all_grids(run)
    assert all(g.shape == (3, 128, 171) for g in grids)  # 64x48 photos → shorter side 128, aspect kept
    assert (table["spacing_source"] == "none").all()
    samples = pd.read_csv(run / "samples.csv")
    assert read_raw_cubes(run)[1].shape == (48, 3, 128, 128)
    assert {"dx_type", "localization"} <= set(samples.columns)
    assert dict(zip(samples["sample_id"], samples["label"])) == {i: int(d != "nv") for i, d in zip(meta["image_id"], meta["dx"])}
    splits = pd.read_csv(run / "splits.csv")
    used = splits[splits.split.isin(["train", "val", "test"])]
    assert (used.groupby("patient_id")["split"].nunique() == 1).all()  # no lesion in two splits
    assert set(used["patient_id"]) <= set(meta["lesion_id"])
