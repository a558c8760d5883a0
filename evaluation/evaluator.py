"""Evaluation: ``metrics.json``, figures, ``report.html`` and overlays of a scored run.

Metrics are computed on the configured split (``test`` by default) for every score column;
``evaluate.score`` names the primary one. Overlays: for each CT series,
``overlays/<series>_residual.nii.gz`` (|x − reconstruction| of each scored cube's centre patch,
in normalised intensity units) and ``overlays/<series>_score.nii.gz`` (the primary score painted
over each cube's extent), both on the grid of ``volumes/<series>.nii.gz``. For 2D inputs (arrays,
image files): ``overlays/top<rank>_<sample>.png`` and ``overlays/normal<rank>_<sample>.png``, the
image, its reconstruction and the residual heatmap side by side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from evaluation.metrics import DEFINITIONS, detection_metrics, patient_level_auroc, per_class_auroc
from evaluation.overlays import nodule_mask, paint, write_overlay
from evaluation.plots import plot_density, plot_gallery, plot_image_maps, plot_nodule_views, plot_overlay_2d, plot_pr, plot_roc, plot_roc_band
from evaluation.report import write_report
from models.catalog import GAN_FAMILIES
from models.catalog import MODELS as CATALOG
from models.model_folder import ModelFileError, model_folder, read_meta, read_normalisation
from pipeline.core import artifacts
from pipeline.core.errors import StageError
from pipeline.core.results import StageResult
from pipeline.core.schema import Config
from preprocessing.cube_store import SampleCubes
from preprocessing.geometry import lps_affine, world_to_index
from preprocessing.intensity import denormalise
from preprocessing.nodules import read_nodules

META_COLS = {"sample_id", "patient_id", "series_uid", "kind", "label", "class", "split", "p_value", "flagged"}


def evaluate(cfg: Config, run_dir: Path) -> StageResult:
    """Metrics of every score on ``evaluate.split``, overlays, figures and the report."""
    ec = cfg.evaluate
    table = artifacts.read_scores(run_dir)
    score_cols = [c for c in table.columns if c not in META_COLS]
    if ec.score not in score_cols:
        raise StageError(f"evaluate.score: {ec.score!r} is not a score column; available: {', '.join(score_cols)}")
    test = table[table["split"] == ec.split]
    groups = test["patient_id"].to_numpy(str)
    per_score = {c: detection_metrics(test["label"].to_numpy(), test[c].to_numpy(), ec.bootstrap, ec.ci, cfg.run.seed, groups) for c in score_cols}
    samples = artifacts.read_samples(run_dir).set_index("sample_id")  # read once: per-class labels and overlay geometry
    classes = class_column(samples, test)
    for c in score_cols:
        if "auroc" in per_score[c]:
            per_score[c]["patient_level"] = patient_level_auroc(test["label"].to_numpy(), test[c].to_numpy(), groups)
            if classes is not None and len(np.unique(classes[test["label"].to_numpy() == 1])) > 1:
                per_score[c]["per_class"] = per_class_auroc(classes, test["label"].to_numpy(), test[c].to_numpy())
    metrics = {
        "primary_score": ec.score,
        "split": ec.split,
        "primary": per_score[ec.score],
        "scores": per_score,
        "definitions": DEFINITIONS | {"score_orientation": "every score: higher = more anomalous"},
    }
    map_metrics = artifacts.read_json("map_metrics", run_dir)
    if map_metrics is not None:  # the map stage's nodule ranks and FROC (CT series), or its whole-image maps (2D)
        metrics["image_map" if map_metrics.get("kind") == "images" else "map"] = map_metrics
    result = StageResult(counts={"evaluated": len(test), "anomalous": int(test["label"].sum())}, extra={"auroc": per_score[ec.score].get("auroc")})
    gan_figures = write_gan_diagnostics(cfg, run_dir, metrics, result) if ec.figures else []
    outputs = [artifacts.write_json("metrics", run_dir, metrics)] + [p for p, _ in gan_figures]
    if ec.overlays and cfg.ingest.format == "dicom":
        outputs += write_overlays(run_dir, table, ec.score, result, samples)
    if ec.figures:
        outputs += write_figures_and_report(cfg, run_dir, table, test, score_cols, per_score, metrics, gan_figures)
    result.outputs = outputs
    return result


def write_gan_diagnostics(cfg: Config, run_dir: Path, metrics: dict, result: StageResult) -> list[tuple[Path, str]]:
    """GAN-family models (``models.catalog.GAN_FAMILIES``): sample grid, sample quality, latent search
    trace and encoder reconstructions on the normal train/val patches (:mod:`evaluation.gan_diagnostics`);
    the numbers go into ``metrics["gan_diagnostics"]``. Other models: nothing (torch is not imported).
    A failure is recorded as an item error of the stage and in the metrics; it does not stop the evaluation."""
    try:
        spec = CATALOG.get(read_meta(model_folder(cfg, run_dir)).get("model_name"))
    except ModelFileError:
        return []  # no readable model folder: the score stage reported it
    if spec is None or spec.family not in GAN_FAMILIES:
        return []
    from evaluation import gan_diagnostics  # torch and the model load only for a GAN-family model

    try:
        numbers, figures = gan_diagnostics.evaluate_run(cfg, run_dir)
    except (RuntimeError, ValueError, KeyError, IndexError, OSError) as exc:
        result.fail("gan_diagnostics", f"{type(exc).__name__}: {str(exc)[:300]}")
        metrics["gan_diagnostics"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        return []
    metrics["gan_diagnostics"] = numbers
    return figures


def write_figures_and_report(cfg: Config, run_dir: Path, table, test, score_cols: list[str], per_score: dict, metrics: dict,
                             gan_figures: list[tuple[Path, str]] = ()) -> list[Path]:
    """ROC, ROC band, precision-recall, density, galleries and ``report.html`` (with the GAN diagnostics' figures, if any)."""
    ec = cfg.evaluate
    fig = lambda name: artifacts.path("figure", run_dir, name=name)  # noqa: E731
    ordered = [ec.score] + [c for c in score_cols if c != ec.score]
    plot_roc(test, ordered, per_score, fig("roc"), f"ROC on {ec.split} split (n={len(test)})")
    plot_density(test, ec.score, fig("score_density"))
    plot_roc_band(test, ec.score, per_score, fig("roc_band"), min(ec.bootstrap, 500) or 100, cfg.run.seed)
    plot_pr(test, ordered, per_score, fig("pr"))
    outputs = [fig(n) for n in ("roc", "score_density", "roc_band", "pr")]
    with ScoredPatches(cfg, run_dir) as patches:
        outputs += write_galleries(cfg, run_dir, test, ec.score, patches)
        if ec.overlays and patches.cubes.ndim == 4 and ec.overlay_top_n > 0:  # 2D inputs: PNG overlays
            outputs += write_png_overlays(cfg, run_dir, test, ec.score, patches)
    if "image_map" in metrics:
        outputs += write_image_map_galleries(cfg, run_dir, test, ec.score)
    if "map" in metrics and metrics["map"]["nodules"]:
        outputs += write_nodule_views(cfg, run_dir)
    if "map" in metrics:
        outputs += write_false_candidate_views(run_dir)
    curves = artifacts.model_file("curves_plot", model_folder(cfg, run_dir))
    figures = [(fig("roc"), "ROC curves, all scores"), (fig("roc_band"), "ROC of the primary score with its 95% bootstrap band"),
               (fig("pr"), "precision-recall"), (fig("score_density"), "score densities by class"), (curves, "training curves"),
               (fig("gallery_most_anomalous"), "gallery: most anomalous test cases"),
               (fig("gallery_least_anomalous"), "gallery: least anomalous test cases")]
    figures += [(p, f"anomaly map through nodules of series {p.stem[len('map_nodules_'):]}: axial, coronal, sagittal (CT and map)")
                for p in sorted(run_dir.glob("map_nodules_*.png"))]
    figures += [(p, f"the 10 highest false candidates of series {p.stem[len('map_false_'):]}: what the map still mistakes for a lesion")
                for p in sorted(run_dir.glob("map_false_*.png"))]
    figures += [(fig(f"maps_{name}_anomalous"), f"whole-image maps of the {name} anomalous {ec.split} cases ({ec.score}), candidates marked")
                for name in ("most", "least") if fig(f"maps_{name}_anomalous").exists()]
    figures += list(gan_figures)
    outputs.append(write_report(run_dir, cfg.to_dict(), metrics, table, figures))
    return outputs


def write_nodule_views(cfg: Config, run_dir: Path) -> list[Path]:
    """Per series with annotated nodules: axial, coronal and sagittal slices through each nodule, CT and anomaly map."""
    cands = pd.read_csv(artifacts.path("candidates", run_dir), dtype={"series_uid": str})
    nodules = pd.DataFrame(artifacts.read_json("map_metrics", run_dir)["nodules"])
    table = read_nodules(cfg.extract.nodules, artifacts.read_series(run_dir))[0].set_index("nodule_id")
    written = []
    for uid, own in nodules.groupby("series_uid"):
        ct = sitk.ReadImage(str(artifacts.path("volume", run_dir, series=uid)))
        amap = sitk.ReadImage(str(artifacts.path("anomaly_map", run_dir, series=uid)))
        # map_metrics holds only nodules inside their volume (anomaly_map._nodules)
        centres = np.rint(world_to_index(lps_affine(ct), table.loc[own["nodule_id"], ["x_mm", "y_mm", "z_mm"]].to_numpy(float))).astype(int)
        near = cands[cands["series_uid"] == uid]
        titles = [f"{n['nodule_id']}: nearest candidate #{n['nearest_rank']} at {n['nearest_mm']:.1f} mm" if n["nearest_rank"] == n["nearest_rank"]
                  else f"{n['nodule_id']}: no candidate" for _, n in own.iterrows()]
        path = artifacts.path("figure", run_dir, name=f"map_nodules_{artifacts.series_stem(uid)}")
        plot_nodule_views(sitk.GetArrayViewFromImage(ct), sitk.GetArrayViewFromImage(amap), centres,
                          near[["i", "j", "k"]].to_numpy(int), titles, path)
        written.append(path)
    return written


def write_false_candidate_views(run_dir: Path, top: int = 10) -> list[Path]:
    """Per series: slices through its ``top`` highest candidates that hit no nodule (``map_false_<series>.png``)."""
    cands = pd.read_csv(artifacts.path("candidates", run_dir), dtype={"series_uid": str})
    if "hit" not in cands.columns:
        return []
    written = []
    for uid, own in cands[~cands["hit"].astype(bool)].groupby("series_uid"):
        false = own.sort_values("rank").head(top)
        ct = sitk.ReadImage(str(artifacts.path("volume", run_dir, series=uid)))
        amap = sitk.ReadImage(str(artifacts.path("anomaly_map", run_dir, series=uid)))
        titles = [f"false #{int(c['rank'])}: score {c['score']:.3g}, size {c['size_mm']:.0f} mm, "
                  f"LPS ({c['x_mm']:.0f}, {c['y_mm']:.0f}, {c['z_mm']:.0f})" for _, c in false.iterrows()]
        path = artifacts.path("figure", run_dir, name=f"map_false_{artifacts.series_stem(uid)}")
        plot_nodule_views(sitk.GetArrayViewFromImage(ct), sitk.GetArrayViewFromImage(amap), false[["i", "j", "k"]].to_numpy(int),
                          own[["i", "j", "k"]].to_numpy(int), titles, path)
        written.append(path)
    return written


class ScoredPatches:
    """The normalised centre patches that were scored (read from their shards), with their residual
    maps and (2D) reconstructions (read from ``residuals.npz`` in one forward pass per call), by sample ID."""

    def __init__(self, cfg: Config, run_dir: Path) -> None:
        hint = "run the score stage first"
        self.residual = artifacts.NpzRows("residuals", run_dir, "residual", hint)
        self.reconstruction = artifacts.NpzRows("residuals", run_dir, "reconstruction", hint) if self.residual.has("reconstruction") else None
        self.row = {s: i for i, s in enumerate(artifacts.read_npz_member("residuals", run_dir, "sample_id", hint))}
        self.norm = read_normalisation(model_folder(cfg, run_dir))
        samples = artifacts.read_samples(run_dir, ["sample_id", *artifacts.SHARD_COLUMNS])
        self.cubes = SampleCubes(run_dir, samples, self.norm, patch=self.residual.shape[-1])
        self.cube_row = {s: i for i, s in enumerate(samples["sample_id"])}

    def __enter__(self) -> "ScoredPatches":
        return self

    def __exit__(self, *exc: object) -> None:
        for rows in (self.residual, self.reconstruction):
            if rows is not None:
                rows.close()

    def image(self, sample_id: str) -> np.ndarray:
        return self.cubes[self.cube_row[sample_id]]

    def residuals_of(self, sample_ids) -> np.ndarray:
        return self.residual.read([self.row[s] for s in sample_ids]).astype(np.float32)

    def reconstructions_of(self, sample_ids) -> list[np.ndarray | None]:
        if self.reconstruction is None:
            return [None] * len(sample_ids)
        return list(self.reconstruction.read([self.row[s] for s in sample_ids]).astype(np.float32))


def write_galleries(cfg: Config, run_dir: Path, test, score_col: str, patches: ScoredPatches, n: int = 6) -> list[Path]:
    """Mid-slices (three planes for 3D) of the centre patch and its residual for the n most and least anomalous test cases."""
    written = []
    ordered = test.sort_values(score_col, ascending=False)
    for name, part in (("most", ordered.head(n)), ("least", ordered.tail(n).iloc[::-1])):
        imgs = [patches.image(s) for s in part["sample_id"]]
        res = list(patches.residuals_of(part["sample_id"]))
        titles = [f"{'anomaly' if lab else 'normal'}\n{score_col}={v:.4g}" for lab, v in zip(part["label"], part[score_col])]
        path = artifacts.path("figure", run_dir, name=f"gallery_{name}_anomalous")
        plot_gallery(imgs, res, titles, path, f"{name} anomalous {cfg.evaluate.split} cases ({score_col})")
        written.append(path)
    return written


def write_image_map_galleries(cfg: Config, run_dir: Path, test, score_col: str, n: int = 6) -> list[Path]:
    """2D maps: the n most and least anomalous test cases (by ``score_col``), each image beside its whole-image map
    (read back from the NIfTI files the map stage wrote) with its candidates: one figure per gallery and one
    ``maps/<sample>_anomaly.png`` per case. Cases the map stage did not map are left out."""

    cands = pd.read_csv(artifacts.path("candidates", run_dir), dtype={"sample_id": str}) if artifacts.path("candidates", run_dir).exists() else None
    ordered = test.sort_values(score_col, ascending=False)
    written = []
    for name, part in (("most", ordered.head(n)), ("least", ordered.tail(n).iloc[::-1])):
        cases = []
        for row in part.to_dict("records"):
            sid = str(row["sample_id"])
            map_path, image_path = artifacts.path("image_map", run_dir, sample=sid), artifacts.path("image_grid", run_dir, sample=sid)
            if not (map_path.exists() and image_path.exists()):
                continue
            image = sitk.GetArrayFromImage(sitk.ReadImage(str(image_path)))
            image = np.moveaxis(image, -1, 0) if image.ndim == 3 else image[None]
            own = cands[cands["sample_id"] == sid] if cands is not None and len(cands) else pd.DataFrame(columns=["row", "column"])
            cls = f" {row['class']}" if "class" in row and pd.notna(row["class"]) else ""
            case = (image, sitk.GetArrayFromImage(sitk.ReadImage(str(map_path))), own[["row", "column"]].to_numpy(int),
                    f"{'anomaly' if row['label'] else 'normal'}{cls}\n{score_col}={row[score_col]:.4g}")
            cases.append(case)
            path = artifacts.path("map_png", run_dir, sample=sid)
            plot_image_maps([case], path, f"{sid}: {case[3].replace(chr(10), ', ')}")
            written.append(path)
        if cases:
            path = artifacts.path("figure", run_dir, name=f"maps_{name}_anomalous")
            plot_image_maps(cases, path, f"{name} anomalous {cfg.evaluate.split} cases ({score_col}): image | whole-image map")
            written.append(path)
    return written


def write_png_overlays(cfg: Config, run_dir: Path, test, score_col: str, patches: ScoredPatches) -> list[Path]:
    """2D inputs: ``overlays/<rank>_<sample>.png`` (image | reconstruction | residual heatmap) for the
    ``overlay_top_n`` most anomalous test cases and as many normal test cases drawn at random.
    Image and reconstruction are shown in stored units (z-scores undone, so RGB keeps its colours);
    the residual is in model units, as in ``residuals.npz``."""
    n = cfg.evaluate.overlay_top_n
    top = test.sort_values(score_col, ascending=False).head(n)
    normals = test[test["label"] == 0]
    normals = normals.sample(min(n, len(normals)), random_state=cfg.run.seed).sort_values(score_col, ascending=False)
    written = []
    for tag, part in (("top", top), ("normal", normals)):
        ids = [str(s) for s in part["sample_id"]]
        maps, recons = patches.residuals_of(ids), patches.reconstructions_of(ids)
        for rank, (row, residual, recon) in enumerate(zip(part.to_dict("records"), maps, recons), 1):
            sid = str(row["sample_id"])
            cls = f", class {row['class']}" if "class" in row else ""
            title = f"{sid}: {'anomaly' if row['label'] else 'normal'}{cls}, {score_col} = {row[score_col]:.4g}"
            path = artifacts.path("overlay_png", run_dir, tag=tag, rank=f"{rank:02d}", sample=sid)
            plot_overlay_2d(denormalise(patches.image(sid), patches.norm), None if recon is None else denormalise(recon, patches.norm),
                            residual, title, path)
            written.append(path)
    return written


def class_column(samples, test) -> np.ndarray | None:
    """Original class labels of the test samples (array datasets), for per-class AUROC."""
    if "class" not in samples.columns:
        return None
    return samples.loc[test["sample_id"], "class"].to_numpy()


def write_overlays(run_dir: Path, table, score_col: str, result: StageResult, samples) -> list[Path]:
    """Residual and score overlays per series, on the ingested CT's grid (the residual maps read one
    series at a time, in their order in ``residuals.npz``, so in one forward pass)."""
    hint = "run the score stage first"
    offset = int(artifacts.read_npz_member("residuals", run_dir, "offset", hint))
    row_of = {s: i for i, s in enumerate(artifacts.read_npz_member("residuals", run_dir, "sample_id", hint))}
    groups = []
    for series, grp in table.groupby("series_uid"):
        if not isinstance(series, str) or not series:  # array datasets have no CT grid
            continue
        if not artifacts.path("volume", run_dir, series=series).exists():
            result.fail(f"series {series}", f"overlay skipped: ingested CT {artifacts.path('volume', run_dir, series=series)} not found")
            continue
        groups.append((series, grp))
    with artifacts.NpzRows("residuals", run_dir, "residual", hint) as residual:
        done = {series: _series_overlays(run_dir, series, grp, residual, row_of, offset, score_col, samples)
                for series, grp in sorted(groups, key=lambda g: min(row_of[s] for s in g[1]["sample_id"]))}
    return [p for series, _ in groups for p in done[series]]


def _series_overlays(run_dir: Path, series: str, grp, residual: artifacts.NpzRows, row_of: dict, offset: int, score_col: str,
                     samples) -> list[Path]:
    """The residual, score and nodule overlays of one series."""
    ct = sitk.ReadImage(str(artifacts.path("volume", run_dir, series=series)))
    shape = ct.GetSize()[::-1]
    geo = samples.loc[grp["sample_id"]]
    starts = geo[["start_i", "start_j", "start_k"]].to_numpy(int)
    res = list(residual.read([row_of[s] for s in grp["sample_id"]])[:, 0])
    out_res = artifacts.path("overlay_residual", run_dir, series=series)
    write_overlay(ct, paint(shape, starts + offset, res), out_res)
    size = geo["size"].to_numpy(int)
    values = grp[score_col].to_numpy(float)
    blocks = [np.full((n, n, n), v, np.float32) for n, v in zip(size, values)]
    out_score = artifacts.path("overlay_score", run_dir, series=series)
    write_overlay(ct, paint(shape, starts, blocks, fill=float(np.nanmin(values))), out_score)
    written = [out_res, out_score]
    nod = geo[geo["kind"] == "nodule"]
    if len(nod):
        out_mask = artifacts.path("overlay_nodules", run_dir, series=series)
        write_overlay(ct, nodule_mask(shape, nod[["i", "j", "k"]].to_numpy(int)), out_mask)
        written.append(out_mask)
    return written
