"""``report.html``: one self-contained page (images inlined as base64, no external assets).

Sections: headline metric, data summary (patients, samples and labels per split; errors from
ingest and extract), metrics with CIs for every score, figures, galleries of the most and least
anomalous test cases, the most anomalous samples, the config and the manifest
(without its times, so equal runs give byte-identical pages; the run folder is named, not its path). A small inline
script counts images that failed to decode and records it on ``<body data-broken-images>``, so a
headless browser test can check the page as a user sees it.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd
import yaml

from evaluation.froc import FP_RATES, rate_key
from pipeline.core import artifacts, io
from pipeline.core.manifest import stable_view


def _img(path: Path, alt: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def _fmt(v, digits: int = 3) -> str:
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v)) if v is not None else "–"


def _metrics_table(per_score: dict, primary: str) -> str:
    rows = []
    for name, m in per_score.items():
        if "auroc" not in m:
            rows.append(f"<tr><td>{html.escape(name)}</td><td colspan=7>{html.escape(m.get('undefined', 'undefined'))}</td></tr>")
            continue
        ci = m.get("auroc_ci") or [None, None]
        lr = m.get("lr_protocol", {})
        cls = ' class="primary"' if name == primary else ""
        rows.append(
            f"<tr{cls}><td>{html.escape(name)}</td><td class=auroc>{m['auroc']:.3f}</td><td>[{_fmt(ci[0])}, {_fmt(ci[1])}]</td>"
            f"<td>{_fmt(m.get('auprc'))}</td><td>{_fmt(m.get('sens_at_90_spec'))}</td><td>{_fmt(m.get('sens_at_95_spec'))}</td>"
            f"<td>{_fmt(m.get('pauroc_fpr10'))}</td><td>{_fmt(lr.get('cv_auroc'))}</td></tr>")
    head = ("<tr><th>score</th><th>AUROC</th><th>95% CI</th><th>AUPRC</th><th>sens@90%spec</th><th>sens@95%spec</th>"
            "<th>pAUROC (FPR≤0.1)</th><th>LR protocol (CV)</th></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _per_class(metrics: dict) -> str:
    """Per-class AUROC of the primary score (all normals against one anomalous class), when there are several classes."""
    per = metrics["primary"].get("per_class")
    if not per:
        return ""
    rows = "".join(f"<tr><td>{html.escape(c)}</td><td>{m['n']}</td><td>{m['auroc']:.3f}</td></tr>" for c, m in per.items())
    allrow = (f"<tr class=primary><td>all anomalies</td><td>{metrics['primary'].get('n_anomalous')}</td>"
              f"<td>{metrics['primary']['auroc']:.3f}</td></tr>")
    return (f"<h3>Per-class AUROC ({html.escape(metrics['primary_score'])}): normals against each class</h3>"
            f"<table><tr><th>class</th><th>n</th><th>AUROC</th></tr>{rows}{allrow}</table>")


def _map_section(metrics: dict, figures: list[tuple[Path, str]]) -> str:
    """The whole-scan map: FROC sensitivities and CPM (pooled, per scan), each nodule's nearest candidate and map
    value beside its malignancy, the nodule views and the highest false candidates."""
    m = metrics.get("map")
    if not m:
        return ""
    pooled = m["pooled"]
    head = "".join(f"<th>{r:g}</th>" for r in FP_RATES) + "<th>CPM</th>"
    line = lambda name, f: (f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{_fmt(f.get(rate_key(r)))}</td>" for r in FP_RATES)  # noqa: E731
                            + f"<td>{_fmt(f.get('cpm'))}</td></tr>")
    scans = "".join(line(f"scan {uid[-8:]} ({f.get('nodules')} nodules)", f) for uid, f in m.get("per_scan", {}).items())
    rows = "".join(f"<tr><td>{html.escape(str(n['nodule_id']))}</td><td>{_fmt(n.get('diameter_mm'), 1)}</td>"
                   f"<td>{_fmt(n.get('malignancy_median'), 1)}</td>"
                   f"<td>{_fmt(n['nearest_rank'])}</td><td>{_fmt(n['nearest_mm'], 1)}</td><td>{_fmt(n['first_hit_rank'])}</td>"
                   f"<td>{_fmt(n.get('map_value'), 4)}</td><td>{_fmt(n.get('map_percentile'), 1)}</td>"
                   f"<td>{'yes' if n.get('in_region', True) else 'no'}</td></tr>" for n in m["nodules"])
    mal = m.get("malignancy") or {}
    mal_text = (f"<p>Map value against median malignancy rating over {mal['nodules']} nodules: Spearman ρ {_fmt(mal['spearman_value'])} "
                f"(percentile: {_fmt(mal['spearman_percentile'])}).</p>" if "spearman_value" in mal else "")
    views = "".join(_img(p, alt) for p, alt in figures if p.name.startswith("map_"))
    return (f"<h2>Whole-scan anomaly map ({html.escape(str(m.get('score')))}, {html.escape(str(m.get('candidates', 'window')))} candidates)</h2>"
            f"<p>{pooled.get('nodules')} annotated nodule(s) in {pooled.get('scans')} scan(s). FROC: sensitivity at k false candidates "
            "per scan, all scans ranked together; CPM: their mean (LUNA16).</p>"
            f"<table><tr><th>FP/scan</th>{head}</tr>{line('pooled', pooled)}{scans}</table>"
            "<table><tr><th>nodule</th><th>diameter mm</th><th>malignancy</th><th>rank of nearest candidate</th><th>distance mm</th>"
            f"<th>first hit rank</th><th>map value</th><th>lung percentile</th><th>in lung region</th></tr>{rows}</table>{mal_text}"
            f"<div class=figs>{views}</div>")


def _image_map_section(metrics: dict, figures: list[tuple[Path, str]]) -> str:
    """2D whole-image maps: how many images, the time per image, how well the maps' peaks separate, and the
    most and least anomalous cases with their maps."""
    m = metrics.get("image_map")
    if not m:
        return ""
    auroc = m.get("image_auroc") or {}
    sep = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in auroc.items())
    views = "".join(_img(p, alt) for p, alt in figures if p.name.startswith("maps_"))
    return (f"<h2>Whole-image anomaly maps ({html.escape(str(m.get('score')))})</h2>"
            f"<p>{m.get('images')} {html.escape(str(m.get('split')))} image(s) mapped with a {m.get('patch')}-pixel window "
            f"({m.get('windows')} windows, {_fmt(m.get('seconds_per_image'), 3)} s per image). Each map is a NIfTI file on the "
            f"image's grid in <code>maps/</code>, beside the image itself; candidates (local maxima) are in <code>candidates.csv</code>. "
            f"Window p-values: {'normal validation windows' if m.get('calibrated') else 'not calibrated'}.</p>"
            + (f"<table><tr><th>image score from the map</th><th>AUROC</th></tr>{sep}</table>" if sep else "")
            + f"<div class=figs>{views}</div>")


def _gan_section(metrics: dict, figures: list[tuple[Path, str]]) -> str:
    """GAN diagnostics (GAN-family models): key numbers and the ``gan_*`` figures (docs/GAN_DIAGNOSTICS.md)."""
    g = metrics.get("gan_diagnostics")
    if not g:
        return ""
    if "error" in g or "skipped" in g:
        return f"<h2>GAN diagnostics</h2><p>{html.escape(str(g.get('error') or g.get('skipped')))}</p>"
    rows = []
    q = g.get("quality")
    if q:
        for key, label in (("mmd2", "MMD² to val normals (PCA space)"), ("precision", "k-NN precision"), ("recall", "k-NN recall"),
                           ("diversity", "diversity"), ("mean_intensity", "mean intensity"), ("nn_l1", "val normal → nearest sample, mean |·|")):
            rows.append((label, q["gen"].get(key), q["train_ref"].get(key)))
    s = g.get("search")
    if s:
        rows += [("search: end loss, G's own samples (known z)", s["own"]["end"], None),
                 ("search: end loss, real val normals", s["real"]["end"], None),
                 ("search: mean |x − G(z*)|, own (model) / real (reference)", s["own"]["l1"], s["real"]["l1"]),
                 ("search: code error ‖z − z*‖/‖z*‖", s["own"]["z_rel_error"], None)]
    e = g.get("encoder")
    if e:
        rows += [("encoder: val L1 of G(E(x))", e["val_l1"], e["mean_image_l1"]),
                 ("encoder: ‖E(x)‖/√N_z on val normals", e["norm_val"]["mean"], e["norm_prior"]["mean"])]
    body = "".join(f"<tr><td>{html.escape(label)}</td><td>{_fmt(a, 4)}</td><td>{_fmt(b, 4)}</td></tr>" for label, a, b in rows)
    views = "".join(_img(p, alt) for p, alt in figures if p.name.startswith("gan_"))
    return ("<h2>GAN diagnostics</h2><p>Label-free: normal training and validation patches only (docs/GAN_DIAGNOSTICS.md). "
            "Reference column: the same statistic for training normals (a perfect generator), the mean-image L1, or the prior's code norm.</p>"
            f"<table><tr><th>diagnostic</th><th>model</th><th>reference</th></tr>{body}</table><div class=figs>{views}</div>")


def _split_summary(scores: pd.DataFrame) -> str:
    g = scores.groupby("split").agg(patients=("patient_id", "nunique"), samples=("sample_id", "size"),
                                    normal=("label", lambda v: int((v == 0).sum())), anomalous=("label", "sum"))
    return g.reset_index().to_html(index=False, border=0)


def _errors(manifest: dict) -> str:
    rows = [(stage, item, msg) for stage, st in manifest.get("stages", {}).items() for item, msg in st.get("errors", [])]
    if not rows:
        return "<p>No item errors.</p>"
    return pd.DataFrame(rows, columns=["stage", "item", "error"]).to_html(index=False, border=0)


def write_report(run_dir: Path, cfg_dict: dict, metrics: dict, scores: pd.DataFrame, figures: list[tuple[Path, str]], top_n: int = 20) -> Path:
    manifest = artifacts.read_json("manifest", run_dir) or {}
    primary = metrics["primary_score"]
    prim = metrics["primary"]
    ci = prim.get("auroc_ci") or [None, None]
    headline = (f"AUROC {prim['auroc']:.3f} (95% CI {_fmt(ci[0])}–{_fmt(ci[1])})" if "auroc" in prim
                else html.escape(prim.get("undefined", "AUROC undefined")))
    test = scores[scores["split"] == metrics["split"]]
    top = test.sort_values(primary, ascending=False).head(top_n)
    top_cols = [c for c in ("sample_id", "patient_id", "kind", "label", primary, "p_value", "flagged") if c in top.columns]
    general = [(p, alt) for p, alt in figures if "gallery" not in p.name and not p.name.startswith(("map_", "maps_", "gan_"))]
    body = f"""
<h1>medanomaly report</h1>
<p class=meta>Run <code>{html.escape(run_dir.name)}</code> · model <b>{html.escape(str(cfg_dict.get('model', {}).get('name')))}</b> \
· primary score <b>{html.escape(primary)}</b> on the <b>{html.escape(metrics['split'])}</b> split</p>
<p class=headline id=headline>{headline}</p>
<h2>Data</h2>{_split_summary(scores)}
<h3>Errors from ingest and extract</h3>{_errors(manifest)}
<h2>Metrics</h2><p>Higher score = more anomalous. CI: {html.escape(prim.get('bootstrap_unit', 'sample'))}-level stratified bootstrap.</p>\
{_metrics_table(metrics['scores'], primary)}{_per_class(metrics)}
<h2>Figures</h2><div class=figs>{''.join(_img(p, alt) for p, alt in general)}</div>
{_map_section(metrics, figures)}{_image_map_section(metrics, figures)}{_gan_section(metrics, figures)}
<h2>Galleries</h2><div class=figs>{''.join(_img(p, alt) for p, alt in figures if 'gallery' in p.name)}</div>
<h2>Most anomalous {html.escape(metrics['split'])} samples</h2>{top[top_cols].to_html(index=False, border=0, float_format=lambda v: f'{v:.4g}')}
<h2>Config</h2><pre>{html.escape(yaml.safe_dump(cfg_dict, sort_keys=False))}</pre>
<h2>Manifest</h2><details><summary>manifest.json (without times, which are in the file)</summary>\
<pre>{html.escape(json.dumps(stable_view(manifest), indent=1)[:200000])}</pre></details>
"""
    page = f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>medanomaly report</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}} table{{border-collapse:collapse;font-size:13px;margin:.5em 0}}
td,th{{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right}} th{{background:#f4f4f4}} td:first-child,th:first-child{{text-align:left}}
tr.primary{{background:#eef6ff;font-weight:600}} .headline{{font-size:1.6em;font-weight:600}} .meta{{color:#555}}
.figs{{display:flex;flex-wrap:wrap;gap:12px}} figure{{margin:0}} figure img{{max-width:520px}} figcaption{{font-size:12px;color:#555}}
pre{{background:#f7f7f7;padding:8px;overflow:auto;font-size:12px}}
</style></head>
<body data-broken-images="unknown">{body}
<script>
window.addEventListener("load", function () {{
  var broken = Array.prototype.filter.call(document.images, function (i) {{ return !i.complete || i.naturalWidth === 0; }}).length;
  document.body.setAttribute("data-broken-images", String(broken));
  document.body.setAttribute("data-images", String(document.images.length));
}});
</script></body></html>
"""
    out = artifacts.path("report", run_dir)
    io.write_text(out, page)
    return out
