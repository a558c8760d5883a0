"""Whole-scan anomaly maps: geometry, localisation, windows outside the lung, candidates, markups, FROC."""

from __future__ import annotations

import json

import jsonschema
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from conftest import LIDC_NODULES, LIDC_SERIES, ROOT, needs_shared, run_cli, validate
from monai.inferers.utils import dense_patch_slices
from scipy import ndimage

from evaluation.anomaly_map import _bbox, _dilated_lung, series_of_split, sweep
from models.zoo import build
from pipeline.core import artifacts
from preprocessing.cubes import lung_mask
from preprocessing.geometry import index_to_world, lps_affine, world_to_index
from preprocessing.lung import lung_region

CONFIG = str(ROOT / "configs" / "ct_nodules.yaml")
FAST = ["--set", "evaluate.bootstrap=20", "--set", "run.threads=1"]  # the main job's blob filter trains nothing
SCHEMA = json.loads((ROOT / "tests" / "data" / "slicer_markups_schema.json").read_text())


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    proc = run_cli("run", CONFIG, "--out", str(out), *FAST, "--set", "map.selection_blobs=3")
    assert proc.returncode == 0, proc.stderr
    return out


def test_maps_share_the_ct_affine_and_grid(demo):
    uid = pd.read_csv(demo / "series.csv", dtype=str)["series_uid"].iloc[0]
    ct = nib.load(str(demo / "volumes" / f"{uid}.nii.gz"))
    for name in ("anomaly", "anomaly_p"):
        m = nib.load(str(demo / "overlays" / f"{uid}_{name}.nii.gz"))
        assert m.shape == ct.shape and np.array_equal(m.affine, ct.affine), name
        assert m.get_data_dtype() == np.float32
    p = nib.load(str(demo / "overlays" / f"{uid}_anomaly_p.nii.gz")).get_fdata()
    assert p.min() >= 0 and p.max() <= 1 and (p < 1).any()
    metrics = json.loads((demo / "metrics.json").read_text())
    assert {n["nodule_id"] for n in metrics["map"]["nodules"]} == set(pd.read_csv(ROOT / "sample_data/ct/nodules.csv")["nodule_id"])
    assert set(metrics["map"]["pooled"]) >= {"sens_at_0.125_fp", "sens_at_1_fp", "sens_at_8_fp", "cpm"}
    assert metrics["map"]["candidates"] == "voxel"
    for n in metrics["map"]["nodules"]:  # the map's value at every nodule, as a percentile of the lung region
        assert 0 <= n["map_percentile"] <= 100 and isinstance(n["in_region"], bool)
    report = (demo / "report.html").read_text()
    assert "Whole-scan anomaly map" in report and "anomaly map through nodules" in report and "CPM" in report
    assert "highest false candidates" in report and list(demo.glob("map_false_*.png"))


def test_the_demo_map_ranks_both_sample_nodules_in_the_top_8(demo):
    """The main job (configs/ct_nodules.yaml) on the bundled slab: each of its two nodules is hit by a top-8 candidate."""
    nodules = json.loads((demo / "map_metrics.json").read_text())["nodules"]
    assert len(nodules) == 2
    for n in nodules:
        assert n["first_hit_rank"] is not None and n["first_hit_rank"] <= 8, n


def test_a_map_ensemble_of_a_run_with_itself_is_that_run(demo, tmp_path):
    """Tail ranks are a monotone map of each member's values, so one run combined with itself (``pipeline ensemble``)
    gives its own candidates in its own order, and the same nodule ranks."""
    proc = run_cli("ensemble", str(demo), str(demo), "--out", str(tmp_path / "ens"))
    assert proc.returncode == 0, proc.stderr
    assert "whole-scan CPM" in proc.stdout
    own, ens = pd.read_csv(demo / "candidates.csv"), pd.read_csv(tmp_path / "ens" / "candidates.csv")
    assert ens[["i", "j", "k"]].head(10).to_numpy().tolist() == own[["i", "j", "k"]].head(10).to_numpy().tolist()
    ranks = {n["nodule_id"]: n["first_hit_rank"] for n in json.loads((demo / "map_metrics.json").read_text())["nodules"]}
    metrics = json.loads((tmp_path / "ens" / "map_metrics.json").read_text())
    assert {n["nodule_id"]: n["first_hit_rank"] for n in metrics["nodules"]} == ranks
    assert metrics["method"] == "fisher" and len(metrics["members"]) == 2
    uid = own["series_uid"].astype(str).iloc[0]
    combined = nib.load(str(tmp_path / "ens" / "overlays" / f"{uid}_anomaly.nii.gz"))
    assert np.array_equal(combined.affine, nib.load(str(demo / "volumes" / f"{uid}.nii.gz")).affine)
    assert (tmp_path / "ens" / "volumes" / f"{uid}.nii.gz").stat().st_size == (demo / "volumes" / f"{uid}.nii.gz").stat().st_size


def test_the_selection_measure_paints_blobs_into_the_validation_tissue(demo):
    """``map.selection_blobs``: blobs painted into the normal validation blocks, found by the map: a FROC and CPM."""
    sel = json.loads((demo / "map_metrics.json").read_text())["selection"]
    assert sel["series"] == 1 and 1 <= sel["blobs"] <= 3 and 0 <= sel["cpm"] <= 1 and sel["seconds"] > 0


def test_candidates_lie_in_the_lung_region_with_a_size(demo):
    """Every candidate of the demo map lies in the lung region (the mask itself, not the sweep margin) and has a size."""
    cfg = validate({}, base_dir=ROOT)
    cands = pd.read_csv(demo / "candidates.csv", dtype={"series_uid": str})
    assert len(cands) and (cands["size_mm"] > 0).all() and cands["hit"].dtype == bool
    for uid, own in cands.groupby("series_uid"):
        ct = sitk.ReadImage(str(demo / "volumes" / f"{uid}.nii.gz"))
        region = lung_region(sitk.GetArrayViewFromImage(ct), ct.GetSpacing()[::-1], cfg.extract.background.lung_hu_max, cfg.map.lung_closing_mm)
        assert region[own["k"].to_numpy(), own["j"].to_numpy(), own["i"].to_numpy()].all()


def test_markups_pass_the_schema_and_match_candidates_csv(demo):
    cands = pd.read_csv(demo / "candidates.csv", dtype={"series_uid": str})
    doc = json.loads((demo / "candidates.mrk.json").read_text())
    jsonschema.validate(doc, SCHEMA)
    points = [p for m in doc["markups"] for p in m["controlPoints"]]
    assert len(points) == len(cands) > 0
    for p, (_, row) in zip(points, cands.iterrows()):
        assert p["id"] == str(row["rank"])
        np.testing.assert_allclose(p["position"], row[["x_mm", "y_mm", "z_mm"]].to_numpy(float), atol=1e-3)
    uid = cands["series_uid"].iloc[0]
    per_series = json.loads((demo / "overlays" / f"{uid}_candidates.mrk.json").read_text())
    jsonschema.validate(per_series, SCHEMA)
    # the candidate's LPS position is its voxel (i, j, k) in the CT's geometry
    ct = sitk.ReadImage(str(demo / "volumes" / f"{uid}.nii.gz"))
    np.testing.assert_allclose(index_to_world(lps_affine(ct), cands[["i", "j", "k"]].to_numpy(float)),
                               cands[["x_mm", "y_mm", "z_mm"]].to_numpy(float), atol=1e-3)


def _phantom() -> tuple[sitk.Image, np.ndarray]:
    """A chest-like CT (HU, 1 mm, LPS direction flipped on x): soft-tissue body, two air-filled lungs, air outside."""
    z, y, x = np.mgrid[0:48, 0:80, 0:96]
    vol = np.full(z.shape, -1000.0, np.float32)
    body = ((x - 48) / 46) ** 2 + ((y - 40) / 36) ** 2 <= 1
    vol[body] = 40.0
    for cx in (18, 78):  # two lungs with a wide mediastinum between them
        vol[((x - cx) / 10) ** 2 + ((y - 40) / 20) ** 2 + ((z - 24) / 20) ** 2 <= 1] = -850.0
    rng = np.random.default_rng(0)
    vol += rng.normal(0, 15, vol.shape).astype(np.float32)
    img = sitk.GetImageFromArray(vol)
    img.SetOrigin((100.0, -50.0, -300.0))
    img.SetDirection((-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    return img, vol


class Spy(torch.nn.Module):
    """A detector wrapper that records the windows it was asked to score."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.patch_size, self.seen = model, model.patch_size, 0

    def score(self, x, mc, gen):
        self.seen += len(x)
        return self.model.score(x, mc, gen)


def _intensity_model(patch: int = 16):
    cfg = validate({"model": {"name": "intensity3d", "statistic": "mean"}, "train": {"patch_size": patch}, "extract": {"cube_size": patch}},
                   base_dir=ROOT)
    model = build("intensity3d", cfg.model, 1, patch)
    lung = torch.full((8, 1, patch, patch, patch), (-850 + 1000) / 1400.0) + torch.rand(8, 1, patch, patch, patch) * 0.02
    model.fit_arrays(lung)
    return model.eval()


def test_a_bright_voxel_at_a_known_point_peaks_in_the_map_within_2_mm(tmp_path):
    img, vol = _phantom()
    point_ijk = np.array([20, 36, 22])  # inside the left lung (i = x, j = y, k = z)
    vol = vol.copy()
    vol[point_ijk[2], point_ijk[1], point_ijk[0]] = 400.0
    point_lps = index_to_world(lps_affine(img), point_ijk)[0]
    cfg = validate({"model": {"name": "intensity3d"}, "train": {"patch_size": 16}, "extract": {"cube_size": 16}, "map": {"overlap": 0.5}},
                   base_dir=tmp_path)
    m = sweep(_intensity_model(), vol, (1.0, 1.0, 1.0), {"mode": "window", "hu_window": [-1000.0, 400.0], "cube_size": 16}, cfg, "intensity")
    peak_zyx = np.unravel_index(np.argmax(m.voxel), m.voxel.shape)
    peak_lps = index_to_world(lps_affine(img), np.array(peak_zyx[::-1]))[0]
    assert np.linalg.norm(peak_lps - point_lps) <= 2.0, (peak_lps, point_lps)
    assert np.allclose(world_to_index(lps_affine(img), point_lps)[0], point_ijk)


def test_windows_fully_outside_the_lung_are_never_scored(tmp_path):
    img, vol = _phantom()
    cfg = validate({"model": {"name": "intensity3d"}, "train": {"patch_size": 16}, "extract": {"cube_size": 16},
                    "map": {"overlap": 0.25, "lung_margin_mm": 2.0}}, base_dir=tmp_path)
    spy = Spy(_intensity_model())
    m = sweep(spy, vol, (1.0, 1.0, 1.0), {"mode": "window", "hu_window": [-1000.0, 400.0], "cube_size": 16}, cfg, "intensity")
    mask = _dilated_lung(vol, (1.0, 1.0, 1.0), cfg)
    lo, hi = _bbox(mask, 16, np.array(vol.shape))
    sub = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    windows = dense_patch_slices(sub.shape, (16, 16, 16), [max(1, int(16 * 0.75))] * 3)
    outside = sum(not sub[w].any() for w in windows)
    assert m.windows == len(windows) and m.skipped == outside > 0
    assert spy.seen == m.windows - m.skipped
    assert np.all(m.voxel[~m.mask] == 0) and np.all(np.isnan(m.score[~m.mask]))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.7, 0.7)])
def test_the_coarse_lung_dilation_contains_the_exact_one_and_is_at_most_the_slack_wider(tmp_path, spacing):
    _, vol = _phantom()
    cfg = validate({"map": {"lung_margin_mm": 4.0}}, base_dir=tmp_path)
    lung = lung_mask(vol, cfg.extract.background.lung_hu_max)
    dist = ndimage.distance_transform_edt(~lung, sampling=spacing)
    grown = _dilated_lung(vol, spacing, cfg)
    slack = np.sqrt(3) * max(spacing)
    assert grown.shape == lung.shape
    assert np.all(grown[dist <= 4.0]) and not np.any(grown[dist > 4.0 + 2 * slack])
    assert grown.sum() > (dist <= 4.0).sum()  # it is coarser, not the same computation


@pytest.mark.slow
@needs_shared
def test_full_lidc_series_map_and_where_the_nodules_rank(tmp_path):
    """The demo model maps the full LIDC-IDRI-0063 series; prints each annotated nodule's nearest candidate (docs/PERFORMANCE.md)."""
    model_run = tmp_path / "model_run"
    proc = run_cli("run", CONFIG, "--out", str(model_run))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "full"
    proc = run_cli("score", "--model", str(model_run / "model"), "--input", str(LIDC_SERIES), "--nodules", str(LIDC_NODULES), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    m = json.loads((out / "map_metrics.json").read_text())
    print(f"\nmap of LIDC-IDRI-0063: {manifest['stages']['map']['wall_time_s']:.1f} s, {manifest['stages']['map']['counts']}")
    for n in m["nodules"]:
        print(f"  {n['nodule_id']}: nearest candidate #{n['nearest_rank']} at {n['nearest_mm']:.1f} mm (radius {n['radius_mm']:.1f}), hit {n['hit']}")
    print(f"  FROC: {m['pooled']}")
    assert len(m["nodules"]) == 4 and m["pooled"]["scans"] == 1
    # the reported ranks and distances are those of candidates.csv, in the map's own LPS frame
    cands = pd.read_csv(out / "candidates.csv")
    assert len(cands) and cands["rank"].tolist() == list(range(1, len(cands) + 1)) and cands["score"].is_monotonic_decreasing
    amap = sitk.ReadImage(str(next((out / "overlays").glob("*_anomaly.nii.gz"))))
    ijk = cands[["i", "j", "k"]].to_numpy(int)
    assert np.all((ijk >= 0) & (ijk < np.array(amap.GetSize())))
    assert np.allclose(index_to_world(lps_affine(amap), ijk), cands[["x_mm", "y_mm", "z_mm"]].to_numpy(float), atol=1e-3)
    table = pd.read_csv(LIDC_NODULES)
    for n in m["nodules"]:
        row = table[table["nodule_id"].astype(str) == str(n["nodule_id"])].iloc[0]
        d = np.linalg.norm(cands[["x_mm", "y_mm", "z_mm"]].to_numpy(float) - row[["x_mm", "y_mm", "z_mm"]].to_numpy(float), axis=1)
        assert n["nearest_rank"] == cands["rank"].iloc[int(np.argmin(d))] and n["nearest_mm"] == pytest.approx(d.min(), abs=1e-3)
        assert n["hit"] == bool((d <= n["radius_mm"]).any())
    sens = [m["pooled"][k] for k in sorted((k for k in m["pooled"] if k.startswith("sens_at_")), key=lambda k: float(k.split("_")[2]))]
    assert sens == sorted(sens) and all(0 <= v <= 1 for v in sens)


def test_map_split_keeps_only_series_whose_normal_cubes_are_all_held_out(tmp_path):
    """Leave one series out: series A and B trained (their nodule cubes are test cubes), C is held out."""
    rows = [("a0", "A", "train", 0), ("a1", "A", "test", 1), ("b0", "B", "val", 0), ("b1", "B", "test", 1),
            ("c0", "C", "test", 0), ("c1", "C", "test", 1), ("d1", "D", "test", 1)]  # D: nodule cubes only
    table = pd.DataFrame(rows, columns=["sample_id", "series_uid", "split", "label"])
    artifacts.write_table("samples", tmp_path, table[["sample_id", "series_uid"]])
    artifacts.write_table("splits", tmp_path, table[["sample_id", "split", "label"]])
    assert series_of_split(tmp_path, "test") == {"C", "D"}
    assert series_of_split(tmp_path, "train") == {"A"}  # all of A's normal cubes trained; its nodule cube does not count
    assert series_of_split(tmp_path, "val") == {"B"}
