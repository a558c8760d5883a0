"""Diagnostics for the generative detectors (AnoGAN/f-AnoGAN WGAN-GP, joint encoder, α-GAN/BiGAN, VAE).

Plain functions over a trained model and arrays of **normal** images (N, C, *spatial) in model
range; no labels are used anywhere, so every number here may drive model selection. Each function
returns JSON-able numbers; the figure writers also save a PNG (2D images, or the middle axial slice
of 3D cubes).

- :func:`sample_grid`: G's samples next to real normal validation images (PNG).
- :func:`sample_quality`: how close G's sample distribution is to the normal validation images,
  in the PCA space of the normal training images (no pretrained network is available offline):
  an unbiased RBF-kernel MMD², k-NN precision/recall (Kynkäänniemi et al. 2019), sample
  diversity, the mean intensity of the samples and each validation image's distance to its nearest
  sample. Every statistic is also computed for an equally large draw of *training* normals against
  the same validation images: that is the value a perfect generator would reach (the reference).
- :func:`search_diagnostics`: the latent search's loss against its steps, for G's own samples
  (the code is known, so the optimum is 0: how close does the search get, and to which code?)
  and for real normals.
- :func:`encoder_diagnostics`: reconstructions G(E(x)) of real normals (PNG) and their errors,
  the encoder's consistency on G's own samples, and the norms ‖E(x)‖ against the prior's
  (the joint encoder's origin-distance score L_o depends on them).
- :func:`run_all`: all of the above for one model, figures into a folder, numbers as a dict.
- :func:`evaluate_run`: what the evaluate stage calls for a GAN-family model (:data:`models.catalog.GAN_FAMILIES`):
  the run's model folder and its normal train/val centre patches → ``gan_*.png`` figures and the numbers
  that go into ``metrics.json`` under ``gan_diagnostics``. docs/GAN_DIAGNOSTICS.md explains the figures.

A model's generator and encoder are what its :meth:`~models.detector.Detector.generator` and
:meth:`~models.detector.Detector.encoder` return (None when it has none), so the module imports
no model class.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from evaluation.plots import save_png  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402
from models.model_folder import model_folder  # noqa: E402
from models.nets.blocks import plain  # noqa: E402
from pipeline.core import artifacts  # noqa: E402
from pipeline.core.schema import Config  # noqa: E402
from preprocessing.cube_store import SampleCubes  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Model adapters
# ---------------------------------------------------------------------------------------------


def latent_dim(model) -> int:
    return int(model.params.latent_dim)


def sample_prior(model, n: int, seed: int = 0) -> torch.Tensor:
    """n codes from the model's latent prior (uniform on [-1, 1] for ``latent_prior: uniform``, else N(0, I))."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, latent_dim(model))
    if getattr(model.params, "latent_prior", "normal") == "uniform":
        return torch.rand(shape, generator=g) * 2 - 1
    return torch.randn(shape, generator=g)


@torch.no_grad()
def generate_samples(model, n: int, seed: int = 0, batch: int = 256) -> np.ndarray:
    """n samples G(z), z from the prior with ``seed``; (n, C, *spatial) float32."""
    gen = model.generator()
    if gen is None:
        raise ValueError(f"{type(model).__name__} has no generator")
    was = model.training
    model.eval()
    z = sample_prior(model, n, seed)
    out = torch.cat([plain(gen(z[i : i + batch])) for i in range(0, n, batch)])
    model.train(was)
    return out.float().cpu().numpy()


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _view2d(x: np.ndarray) -> np.ndarray:
    """(N, C, *spatial) → (N, H, W): 2D as is (first channel), 3D the middle axial slice."""
    x = np.asarray(x)[:, 0]
    if x.ndim == 4:
        x = x[:, x.shape[1] // 2]
    return x


def _grid(rows: list[tuple[str, np.ndarray]], path: Path, title: str = "") -> None:
    ncol = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(0.9 * ncol + 1.2, 0.95 * len(rows) + 0.4), squeeze=False)
    for i, (label, imgs) in enumerate(rows):
        imgs = _view2d(imgs)
        for j in range(ncol):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if j < len(imgs):
                ax.imshow(imgs[j], cmap="gray", vmin=0.0, vmax=1.0)
        axes[i][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    save_png(fig, path, dpi=90, tight=False)


def sample_grid(model, normals: np.ndarray, path: Path, n: int = 16, seed: int = 0, title: str = "") -> dict:
    """PNG: two rows of real normal images over two rows of G's samples (3D: middle axial slice)."""
    samples = generate_samples(model, 2 * n, seed)
    real = np.asarray(normals)[: 2 * n]
    _grid([("real", real[:n]), ("real", real[n : 2 * n]), ("G(z)", samples[:n]), ("G(z)", samples[n:])], Path(path), title)
    return {"sample_grid": str(path)}


# ---------------------------------------------------------------------------------------------
# Sample quality (distribution level, label-free)
# ---------------------------------------------------------------------------------------------


def _flat(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x.reshape(len(x), -1)


def _pca(train: np.ndarray, k: int):
    """Mean and top-k principal axes of the flattened training images (via SVD)."""
    mean = train.mean(0)
    k = max(1, min(k, len(train) - 1, train.shape[1]))
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    return mean, vt[:k]


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(d, 0.0)


def mmd2(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """Unbiased MMD² with the RBF kernel exp(−‖a−b‖²/(2h²)); 0 in expectation when x and y share a distribution."""
    g = 1.0 / (2 * bandwidth**2)
    kxx, kyy, kxy = np.exp(-g * _sqdist(x, x)), np.exp(-g * _sqdist(y, y)), np.exp(-g * _sqdist(x, y))
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean())


def knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Kynkäänniemi et al. (2019): precision = share of fakes inside the union of the reals' k-NN
    balls; recall = share of reals inside the union of the fakes' k-NN balls."""
    k_r = min(k, len(real) - 1)
    k_f = min(k, len(fake) - 1)
    drr = np.sqrt(_sqdist(real, real))
    dff = np.sqrt(_sqdist(fake, fake))
    r_real = np.sort(drr, 1)[:, k_r]  # column 0 is the point itself
    r_fake = np.sort(dff, 1)[:, k_f]
    drf = np.sqrt(_sqdist(real, fake))  # (R, F)
    precision = float((drf <= r_real[:, None]).any(0).mean())
    recall = float((drf <= r_fake[None, :]).any(1).mean())
    return precision, recall


def sample_quality(samples: np.ndarray, val: np.ndarray, train: np.ndarray, n_components: int = 32, k: int = 3, seed: int = 0) -> dict:
    """Distribution-level closeness of ``samples`` to the normal ``val`` images, with the same
    statistics for a draw of ``train`` normals (as many as there are samples, at most all of
    them) as the reference a perfect generator would reach.

    Space: the top ``n_components`` PCA axes of the flattened training normals (fitted on
    ``train`` only). MMD² (unbiased, RBF kernel, bandwidth = median train-val distance),
    k-NN precision/recall, diversity (mean pairwise distance / that of the validation images),
    mean intensity, and ``nn_l1``: each validation image's mean-|·| pixel distance to its nearest
    sample (how well the samples cover the normals; a lower bound on what a latent search must beat).
    """
    rng = np.random.default_rng(seed)
    s, v, t = _flat(samples), _flat(val), _flat(train)
    n = min(len(s), len(t))
    s = s[rng.permutation(len(s))[:n]]
    t_ref = t[rng.permutation(len(t))[:n]]
    mean, axes = _pca(t, n_components)
    ps, pv, pt = (s - mean) @ axes.T, (v - mean) @ axes.T, (t_ref - mean) @ axes.T
    h = float(np.median(np.sqrt(_sqdist(pt, pv)))) or 1.0
    out: dict = {"space": f"PCA({axes.shape[0]}) of the training normals", "n_samples": int(n), "n_val": int(len(v)), "bandwidth": h}
    for name, p, raw in (("gen", ps, s), ("train_ref", pt, t_ref)):
        prec, rec = knn_precision_recall(pv, p, k)
        pair = np.sqrt(_sqdist(p, p))
        out[name] = {
            "mmd2": mmd2(p, pv, h),
            "precision": prec,
            "recall": rec,
            "diversity": float(pair[np.triu_indices(len(p), 1)].mean()),
            "mean_intensity": float(raw.mean()),
            "nn_l1": float(np.mean([np.abs(raw - vi[None]).mean(1).min() for vi in v])),
        }
    pv_pair = np.sqrt(_sqdist(pv, pv))
    out["val_diversity"] = float(pv_pair[np.triu_indices(len(pv), 1)].mean()) if len(pv) > 1 else float("nan")
    out["val_mean_intensity"] = float(v.mean())
    out["mmd2_excess"] = out["gen"]["mmd2"] - out["train_ref"]["mmd2"]  # ≈ 0 for a perfect generator
    return out


def model_sample_quality(model, val: np.ndarray, train: np.ndarray, n: int = 1000, seed: int = 0, **kw) -> dict:
    """:func:`sample_quality` of ``n`` fresh samples of ``model``."""
    return sample_quality(generate_samples(model, n, seed), val, train, seed=seed, **kw)


# ---------------------------------------------------------------------------------------------
# Latent search
# ---------------------------------------------------------------------------------------------


def search_trace(model, x: torch.Tensor, seed: int = 0, **overrides) -> tuple[np.ndarray, dict]:
    """Run the model's own latent search (``model.latent_search()``) on ``x``, recording the mean loss per
    step; returns (loss per step, final per-sample terms and codes). ``overrides`` temporarily
    replace search parameters (search_steps, search_lr, restarts, search_optimizer, …)."""
    search = model.latent_search()
    if search is None:
        raise ValueError(f"{type(model).__name__} has no latent search")
    old = {k: getattr(model.params, k) for k in overrides}
    for k, v in overrides.items():
        setattr(model.params, k, v)
    trace: list[float] = []
    was = model.training
    model.eval()
    try:
        z, terms = search(x, torch.Generator().manual_seed(seed), trace=trace)
    finally:
        for k, v in old.items():
            setattr(model.params, k, v)
        model.train(was)
    return np.asarray(trace), {"z": z, **terms}


def search_diagnostics(model, val: np.ndarray, path: Path | None = None, n: int = 64, seed: int = 0, **overrides) -> dict:
    """The search's loss against its steps for ``n`` of G's own samples (known code z*: the optimum
    is 0) and ``n`` real normals. Numbers: the loss at the start and end of each, the end loss of
    the known-code case as a share of the real normals' (≪ 1: the search can invert G, so the
    real normals' loss measures G's fit; ≈ 1: the search itself is the bottleneck), the relative
    change over the last 10 % of the steps (≈ 0: converged), and the distance of the found code
    from z* (relative to ‖z*‖)."""
    z_true = sample_prior(model, n, seed + 1)
    with torch.no_grad():
        was = model.training
        model.eval()
        x_own = plain(model.generator()(z_true))
        model.train(was)
    x_real = torch.from_numpy(np.ascontiguousarray(np.asarray(val)[:n], dtype=np.float32))
    own_trace, own = search_trace(model, x_own, seed, **overrides)
    real_trace, real = search_trace(model, x_real, seed, **overrides)

    out = {
        "steps": int(len(own_trace)),
        "own": {"start": _start(own_trace, own), "end": float(own["anogan"].mean()), "tail_rel_change": _tail_change(own_trace),
                 "z_rel_error": float(((own["z"] - z_true).norm(dim=1) / z_true.norm(dim=1)).mean()),
                 "residual_per_voxel": float(own["residual"].mean() / x_own[0].numel()), "l1": _l1(model, x_own, own["z"])},
        "real": {"start": _start(real_trace, real), "end": float(real["anogan"].mean()), "tail_rel_change": _tail_change(real_trace),
                 "residual_per_voxel": float(real["residual"].mean() / x_real[0].numel()), "l1": _l1(model, x_real, real["z"])},
    }
    out["own_over_real"] = out["own"]["end"] / max(out["real"]["end"], 1e-12)
    if path is not None:
        out.update(_search_figures(model, (own_trace, real_trace), (x_own, own["z"]), (x_real, real["z"]), Path(path)))
    return out


@torch.no_grad()
def _l1(model, x: torch.Tensor, z: torch.Tensor) -> float:
    """Mean |x − G(z)| over voxels and images, in model range (unlike the search terms, never rescaled)."""
    was = model.training
    model.eval()
    g = plain(model.generator()(z))
    model.train(was)
    return float((x - g).abs().mean())


def _start(trace: np.ndarray, found: dict) -> float:
    """The loss before the first step (with no steps: the final loss, nothing moved)."""
    return float(trace[0]) if len(trace) else float(found["anogan"].mean())


def _tail_change(tr: np.ndarray) -> float:
    """Relative change of the loss over the last 10 % of the steps (≈ 0: converged)."""
    m = max(2, len(tr) // 10)
    return float((tr[-1] - tr[-m]) / max(abs(tr[-m]), 1e-12)) if len(tr) >= 2 else float("nan")


@torch.no_grad()
def _search_figures(model, traces, own, real, path: Path) -> dict:
    """The loss-against-steps plot (``path``) and the matches grid (``<path stem>_matches.png``):
    the first 16 known-code samples and real normals over the images at the codes the search found."""
    fig, ax = plt.subplots(figsize=(4.2, 3.0))
    ax.plot(traces[0], label="G's own samples (known z)")
    ax.plot(traces[1], label="real normals (val)")
    if all(len(t) and np.all(np.asarray(t) > 0) for t in traces):
        ax.set_yscale("log")
    ax.set_xlabel("search step")
    ax.set_ylabel("mean search loss L(z)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=90, tight=False)
    was = model.training
    model.eval()
    gen = model.generator()
    rows = [("G(z*)", own[0][:16].numpy()), ("search", plain(gen(own[1][:16])).numpy()),
            ("real", real[0][:16].numpy()), ("search", plain(gen(real[1][:16])).numpy())]
    model.train(was)
    grid = path.with_name(path.stem + "_matches.png")
    _grid(rows, grid, "latent search: known-code samples and real normals with their closest matches")
    return {"figure": str(path), "matches_figure": str(grid)}


# ---------------------------------------------------------------------------------------------
# Encoder reconstructions
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def encoder_diagnostics(model, val: np.ndarray, path: Path | None = None, n_show: int = 16, n_own: int = 256, seed: int = 0) -> dict:
    """Reconstructions G(E(x)) of the normal ``val`` images: mean L1/L2, the same errors for the
    mean-image baseline (a reconstruction that ignores x), the encoder's consistency on G's own
    samples (‖G(z) − G(E(G(z)))‖₁ and cos(E(G(z)), z)), and code norms ‖E(·)‖/√N_z for real normals,
    for G's samples and for prior draws."""
    enc, gen = model.encoder(), model.generator()
    if enc is None or gen is None:
        raise ValueError(f"{type(model).__name__} has no encoder and generator")
    was = model.training
    model.eval()
    try:
        x = torch.from_numpy(np.ascontiguousarray(val, dtype=np.float32))
        z_hat = torch.cat([plain(enc(x[i : i + 256])) for i in range(0, len(x), 256)])
        rec = torch.cat([plain(gen(z_hat[i : i + 256])) for i in range(0, len(x), 256)])
        z = sample_prior(model, n_own, seed + 2)
        g = plain(gen(z))
        z_back = plain(enc(g))
        g_back = plain(gen(z_back))
    finally:
        model.train(was)
    d = (x - rec).flatten(1)
    base = (x - x.mean(0, keepdim=True)).flatten(1)
    nz = math.sqrt(z.shape[1])
    out = {
        "val_l1": float(d.abs().mean()), "val_l2": float(d.pow(2).mean()),
        "mean_image_l1": float(base.abs().mean()), "mean_image_l2": float(base.pow(2).mean()),
        "own_cycle_l1": float((g - g_back).abs().mean()),
        "own_code_cos": float(torch.nn.functional.cosine_similarity(z_back, z, dim=1).mean()),
        "norm_val": {"mean": float(z_hat.norm(dim=1).mean() / nz), "std": float(z_hat.norm(dim=1).std() / nz)},
        "norm_own": {"mean": float(z_back.norm(dim=1).mean() / nz), "std": float(z_back.norm(dim=1).std() / nz)},
        "norm_prior": {"mean": float(z.norm(dim=1).mean() / nz), "std": float(z.norm(dim=1).std() / nz)},
    }
    if path is not None:
        rows = [("x (val)", x[:n_show]), ("G(E(x))", rec[:n_show]), ("G(z)", g[:n_show]), ("G(E(G(z)))", g_back[:n_show])]
        title = f"encoder: val L1 {out['val_l1']:.4f} (mean-image L1 {out['mean_image_l1']:.4f}), cycle L1 {out['own_cycle_l1']:.4f}"
        _grid([(label, t.numpy()) for label, t in rows], Path(path), title)
        out["figure"] = str(path)
    return out


# ---------------------------------------------------------------------------------------------
# Everything
# ---------------------------------------------------------------------------------------------


def run_all(model, train: np.ndarray, val: np.ndarray, out_dir: Path, tag: str, n_samples: int = 1000, search_n: int = 64,
            seed: int = 0) -> dict:
    """Every diagnostic that applies to ``model`` (normal ``train`` and ``val`` arrays in model
    range, centre patches); figures ``<out_dir>/<tag>_*.png``; returns the numbers."""
    out_dir = Path(out_dir)
    res: dict = {"model": type(model).__name__, "tag": tag, "parameters": int(sum(p.numel() for p in model.parameters()))}
    if model.generator() is not None:
        res.update(sample_grid(model, val, out_dir / f"{tag}_samples.png", seed=seed, title=f"{tag}: real normals (top) vs G(z) (bottom)"))
        res["quality"] = model_sample_quality(model, val, train, n=n_samples, seed=seed)
    if model.latent_search() is not None:
        res["search"] = search_diagnostics(model, val, out_dir / f"{tag}_search.png", n=search_n, seed=seed)
    if model.encoder() is not None and model.generator() is not None:
        res["encoder"] = encoder_diagnostics(model, val, out_dir / f"{tag}_recon.png", seed=seed)
    return res


# ---------------------------------------------------------------------------------------------
# The evaluate stage
# ---------------------------------------------------------------------------------------------

FIGURES = {  # figure name (``<run>/<name>.png``) → caption in report.html
    "gan_samples": "GAN: real normal validation images (top two rows) against G(z) for prior codes (bottom two rows)",
    "gan_search": "GAN: latent search loss against steps, for G's own samples (known code) and real normal validation images",
    "gan_search_matches": "GAN: known-code samples and real normals (rows 1, 3) with the images at the codes the search found (rows 2, 4)",
    "gan_recon": "GAN: encoder reconstructions G(E(x)) of real normal validation images, and E's cycle on G's samples",
}


def normal_patches(cfg: Config, run_dir: Path, norm: dict, patch: int, cap: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre patches (model range) of the run's normal ``train`` and ``val`` samples, at most ``cap`` of each (a seeded draw)."""
    samples = artifacts.read_samples(run_dir, ["sample_id", *artifacts.SHARD_COLUMNS])  # the cubes are read from their shards
    splits = artifacts.read_splits(run_dir, ["sample_id", "split", "label"]).set_index("sample_id").loc[samples["sample_id"]]
    normal = splits["label"].to_numpy() == 0
    rng = np.random.default_rng(seed)
    out = []
    for split in ("train", "val"):
        rows = np.flatnonzero(normal & (splits["split"].to_numpy() == split))
        rows = np.sort(rng.permutation(rows)[:cap])
        out.append(SampleCubes(run_dir, samples.iloc[rows], norm, patch)[:].astype(np.float32))
    return out[0], out[1]


def evaluate_run(cfg: Config, run_dir: Path, n_samples: int = 1000, search_n: int = 32, cap: int = 1000) -> tuple[dict, list[tuple[Path, str]]]:
    """The evaluate stage's GAN diagnostics: the model of the run (or ``score.model``) on the run's
    normal train/val centre patches. Returns the numbers (for ``metrics.json``) and the figures
    written (``gan_*.png`` in the run folder) with their captions; ``{"skipped": reason}`` when the
    run has no normal validation (or training) patches."""
    model, payload = load_checkpoint(model_folder(cfg, run_dir))
    train, val = normal_patches(cfg, run_dir, payload["normalisation"], int(payload["patch_size"]), cap, cfg.run.seed)
    if len(val) < 2 or len(train) < 2:
        return {"skipped": f"needs ≥ 2 normal train and val patches (found {len(train)} and {len(val)})"}, []
    torch.manual_seed(cfg.run.seed)
    out_dir = artifacts.path("figure", run_dir, name="gan_samples").parent
    res = run_all(model, train, val, out_dir, "gan", n_samples=n_samples, search_n=search_n, seed=cfg.run.seed)
    written = set(_pngs(res))
    figures = [(artifacts.path("figure", run_dir, name=name), caption) for name, caption in FIGURES.items()]
    return json_safe(res), [(p, c) for p, c in figures if p.name in written]


def _pngs(obj):
    """File names of the figures a result of :func:`run_all` names."""
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _pngs(v)
    elif isinstance(obj, str) and obj.endswith(".png"):
        yield Path(obj).name


def json_safe(obj):
    """Numbers as plain floats (NaN/inf → None, which JSON has no literal for), figure paths as file names."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, str) and obj.endswith(".png"):
        return Path(obj).name
    return obj
