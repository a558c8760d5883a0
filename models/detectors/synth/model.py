"""Synthetic-anomaly detector (FPI / NSA / CutPaste family) on MONAI's ``UNet``, 2D and 3D.

Training (normals only): each batch is altered by :func:`synth_blend`. For most images a random
shape mask m (a randomly rotated ellipse/ellipsoid with random semi-axes, radially deformed by a
smooth random field into a blob, with a smoothed edge; ``m`` is exactly 0 outside its support) is
filled with a patch p cut from another image of the batch at a random position (reflection-padded,
so a shifted source has no hard seam), blended linearly with a factor α ~ U(alpha):
x' = (1 − α·m)·x + α·m·p (Tan et al.'s Foreign Patch Interpolation). A ``clean_fraction`` of the
batch is left unaltered (target 0). The U-Net predicts α·m per voxel, trained with BCE (soft
targets) or MSE on the sigmoid output.

``trim`` > 0 leaves out of each training step the fraction of the batch with the highest loss on
its unaltered voxels (a trimmed loss against anomalies hidden in the training data,
:func:`trimmed_mean`); the validation loss always averages the whole batch.

Selection: the validation loss is the same pretext loss on the normal validation patches, altered
with a fixed seed (the same synthetic anomalies every epoch), so early stopping and the selected
epoch use normal data only.

Scores (higher = more anomalous) from the predicted map a(x) = sigmoid(UNet(x)) of a clean input:
``synth_mean`` = mean of a; ``synth_top1`` / ``synth_top10`` = mean of its top 1 % / 10 % voxels;
``synth_max`` = its maximum; ``feat_knn`` / ``feat_maha`` = k-NN and LedoitWolf Mahalanobis
distances of the U-Net's bottleneck features (global average pool of its bottom layer)
to those of the normal training patches (:mod:`models.nets.feature_density`, fitted after training).
Residual map: a(x) itself, so the overlay shows where the net sees foreign content.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.layers import SkipConnection
from monai.networks.nets import UNet
from torch import nn

# --------------------------------------------------------------------------------------------
from models.detector import Detector, ScoreOutput
from models.detectors.synth.families import FILLS, SHAPES
from models.detectors.synth.params import SynthParams
from models.nets.blocks import plain
from models.nets.feature_density import FeatureDensity
from models.registry import DETECTORS, register_2d_3d

# the generator (pure functions of the input and an explicit torch.Generator)
# --------------------------------------------------------------------------------------------


@dataclass
class SynthSpec:
    """Distribution of the synthetic anomalies (fractions are of the patch size)."""

    radius: tuple[float, float] = (0.08, 0.35)  # each semi-axis ~ U(radius)·patch
    blob: float = 0.3  # radial deformation amplitude ~ U(0, blob): ρ' = ρ·(1 + b·noise), noise ∈ [−1, 1]
    edge: tuple[float, float] = (0.0, 0.5)  # soft-edge width (fraction of the normalised radius) ~ U(edge)
    alpha: tuple[float, float] = (0.0, 1.0)  # blend factor ~ U(alpha)
    clean_fraction: float = 0.25  # probability an image is left unaltered
    centre_margin: float = 0.15  # mask centre ~ U(margin, 1 − margin)·patch per axis
    noise_grid: int = 4  # coarse grid size of the blob's smooth noise field
    shapes: tuple[str, ...] = ("ellipsoid",)  # mask families, one drawn uniformly per image (SHAPES)
    fills: tuple[str, ...] = ("patch",)  # what fills the mask, one drawn uniformly per image (FILLS)
    radius_scale: str = "linear"  # linear: each semi-axis ~ U(radius); log: log-uniform (every scale equally often)
    centre_below: float | None = None  # the mask centre is a voxel whose intensity (channel mean) is below this (e.g. lung air in CT)



def _rand(rng: torch.Generator, *shape) -> torch.Tensor:
    return torch.rand(*shape, generator=rng, dtype=torch.float64)


def _uniform(rng: torch.Generator, lo: float, hi: float, *shape) -> torch.Tensor:
    return lo + (hi - lo) * _rand(rng, *shape)


def random_rotation(dims: int, rng: torch.Generator) -> torch.Tensor:
    """A uniformly random rotation matrix (dims × dims, det +1, float64)."""
    q, r = torch.linalg.qr(torch.randn(dims, dims, generator=rng, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))[None]
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def random_mask(size: int, dims: int, rng: torch.Generator, spec: SynthSpec, shape: str = "ellipsoid",
                pool: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """One soft mask of shape ``(size,)*dims`` in [0, 1] (float32), exactly 0 outside its support,
    and its draw: ``radii`` (voxels), ``centre``, ``blob``, ``edge``, ``shape`` (one of :data:`SHAPES`).

    ``pool`` (bool, ``(size,)*dims``): when it holds a voxel within the centre margin, the centre is one of
    those voxels (uniformly, plus a sub-voxel offset), else anywhere within the margin."""
    if shape not in SHAPES:
        raise ValueError(f"unknown synthetic shape {shape!r}; known: {', '.join(SHAPES)}")
    centre = _uniform(rng, spec.centre_margin * size, (1 - spec.centre_margin) * size, dims)
    if pool is not None:
        lo, hi = int(math.ceil(spec.centre_margin * size)), int(math.floor((1 - spec.centre_margin) * size))
        inner = torch.zeros_like(pool)
        inner[tuple(slice(lo, max(lo, hi)) for _ in range(dims))] = True
        where = torch.nonzero(pool & inner)
        if len(where):
            centre = where[int(torch.randint(0, len(where), (1,), generator=rng))].double() + _rand(rng, dims)
    if spec.radius_scale == "log":
        radii = torch.exp(_uniform(rng, math.log(spec.radius[0] * size), math.log(spec.radius[1] * size), dims))
    else:
        radii = _uniform(rng, spec.radius[0] * size, spec.radius[1] * size, dims)
    rot = random_rotation(dims, rng)
    blob = float(_uniform(rng, 0.0, spec.blob, 1)) if spec.blob > 0 else 0.0
    edge = float(_uniform(rng, spec.edge[0], spec.edge[1], 1))
    axes = [torch.arange(size, dtype=torch.float64) + 0.5 for _ in range(dims)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)  # (*S, dims), voxel centres
    local = ((grid - centre) @ rot) / radii  # coordinates in the ellipsoid's frame, unit radius
    rho = local.abs().amax(dim=-1) if shape == "box" else local.norm(dim=-1)
    if blob > 0 and shape == "ellipsoid":
        coarse = 2 * _rand(rng, 1, 1, *([spec.noise_grid] * dims)) - 1
        mode = "bilinear" if dims == 2 else "trilinear"
        noise = F.interpolate(coarse, size=[size] * dims, mode=mode, align_corners=True)[0, 0]
        rho = rho * (1 + blob * noise)
    t = ((1 - rho) / max(edge, 1e-6)).clamp(0, 1)
    m = t * t * (3 - 2 * t)  # smoothstep: 0 at the boundary ρ = 1, 1 inside ρ ≤ 1 − edge
    return m.float(), {"radii": radii, "centre": centre, "blob": blob, "edge": edge, "shape": shape}


def _pick(rng: torch.Generator, options: tuple[str, ...]) -> str:
    """One of ``options``, uniformly (no draw at all when there is one, so a single-family spec keeps its old stream)."""
    return options[int(torch.randint(0, len(options), (1,), generator=rng))] if len(options) > 1 else options[0]


def gaussian_smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x`` (C, *S) smoothed per channel by a separable Gaussian of ``sigma`` voxels (reflect padding; unchanged when ≤ 0)."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) / sigma) ** 2)
    k = k / k.sum()
    out = x[None]
    dims = x.dim() - 1
    conv = F.conv2d if dims == 2 else F.conv3d
    for axis in range(dims):
        shape = [1, 1] + [1] * dims
        shape[2 + axis] = len(k)
        pad = [0, 0] * dims
        pad[2 * (dims - 1 - axis)] = pad[2 * (dims - 1 - axis) + 1] = r
        out = F.pad(out, pad, mode="reflect") if min(out.shape[2:]) > r else F.pad(out, pad, mode="replicate")
        out = conv(out.reshape(-1, 1, *out.shape[2:]), k.view(shape)).reshape(1, x.shape[0], *x.shape[1:])
    return out[0]


def fill(kind: str, batch: torch.Tensor, i: int, rng: torch.Generator) -> tuple[torch.Tensor, int]:
    """The content ``f`` (C, *S) that family ``kind`` (:data:`FILLS`) blends into image ``i`` of ``batch``
    (B, C, *S), and the index of its source image (−1 when it comes from the image itself)."""
    b = len(batch)
    if kind == "patch":
        j = (i + int(torch.randint(1, b, (1,), generator=rng))) % b if b > 1 else i  # another image (itself, shifted, if alone)
        return shifted_source(batch[j], rng), j
    xi = batch[i]
    if kind == "constant":
        return torch.full_like(xi, float(_rand(rng, 1))), -1
    if kind == "shift":
        d = float(_uniform(rng, 0.1, 0.5, 1)) * (1.0 if float(_rand(rng, 1)) < 0.5 else -1.0)
        return xi + d, -1
    if kind == "noise":
        sigma, amp = float(_uniform(rng, 0.0, 1.5, 1)), float(_uniform(rng, 0.05, 0.3, 1))
        n = gaussian_smooth(torch.randn(xi.shape, generator=rng, dtype=torch.float64).to(xi.dtype), sigma)
        return xi + amp * n / n.std().clamp_min(1e-6), -1
    if kind == "blur":
        return gaussian_smooth(xi, float(_uniform(rng, 1.0, 3.0, 1))), -1
    raise ValueError(f"unknown synthetic fill {kind!r}; known: {', '.join(FILLS)}")


def shifted_source(src: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """``src`` (C, *S) translated by a random offset of up to half the patch per axis, the gap
    filled by reflection (no hard seam)."""
    size = src.shape[1:]
    pad = [s // 2 for s in size]
    padded = F.pad(src[None], [p for p in reversed(pad) for _ in range(2)], mode="reflect")[0]
    off = [int(torch.randint(0, 2 * p + 1, (1,), generator=rng)) for p in pad]
    return padded[(slice(None), *[slice(o, o + s) for o, s in zip(off, size)])]


def synth_blend(x: torch.Tensor, rng: torch.Generator, spec: SynthSpec) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Alter a batch ``x`` (B, C, *S) with synthetic local anomalies (a mask of :data:`SHAPES` filled by one of :data:`FILLS`).

    Returns ``(x', target, info)``: x' as x, target α·m of shape (B, 1, *S), and ``info`` with
    ``altered`` (B,) bool, ``alpha`` (B,), ``source`` (B,) index of the source image (−1 if clean or filled from itself),
    ``masks`` (B, *S) and the per-image mask draws ``draws``. Outside the mask (m = 0) x' equals x
    exactly; inside it is a convex combination of x and the fill f.
    """
    x = plain(x)
    b, dims, size = len(x), x.dim() - 2, x.shape[-1]
    out, target = x.clone(), torch.zeros(b, 1, *x.shape[2:], dtype=x.dtype, device=x.device)
    masks = torch.zeros(b, *x.shape[2:], dtype=x.dtype, device=x.device)
    altered = torch.zeros(b, dtype=torch.bool)
    alphas = torch.zeros(b, dtype=torch.float64)
    sources = torch.full((b,), -1, dtype=torch.long)
    draws = []
    lo, hi = (float(x.min()), float(x.max())) if any(f != "patch" for f in spec.fills) else (0.0, 0.0)
    for i in range(b):
        if float(_rand(rng, 1)) < spec.clean_fraction:
            draws.append(None)
            continue
        kind = _pick(rng, spec.fills)
        p, j = fill(kind, x, i, rng)
        if kind != "patch":  # within the batch's own intensity range: a value no image has would be a trivial cue
            p = p.clamp(lo, hi)
        pool = x[i].mean(0) < spec.centre_below if spec.centre_below is not None else None
        m, draw = random_mask(size, dims, rng, spec, _pick(rng, spec.shapes), pool)
        draw["fill"] = kind
        m = m.to(x.device, x.dtype)
        alpha = float(_uniform(rng, spec.alpha[0], spec.alpha[1], 1))
        am = alpha * m
        out[i] = torch.where(m[None] > 0, (1 - am) * x[i] + am * p, x[i])
        target[i, 0] = am
        masks[i] = m
        altered[i], alphas[i], sources[i] = True, alpha, j
        draws.append(draw)
    return out, target, {"altered": altered, "alpha": alphas, "source": sources, "masks": masks, "draws": draws}


def visibility_target(x: torch.Tensor, altered: torch.Tensor, masks: torch.Tensor, tau: float) -> torch.Tensor:
    """NSA's target (Schlüter et al. 2022): each image's mask times how visible its change is,
    clip(mean |x' − x| over the mask (weighted by m) / ``tau``, 0, 1); (B, 1, *S).

    With the plain α·m target, an alteration that changes nothing visible (a lung patch blended into
    lung, a small shift) is still labelled anomalous, so the network learns to hedge everywhere and
    natural variation (a slightly denser lung region) scores like a lesion.
    """
    m = masks[:, None].to(x.dtype)
    w = m.flatten(1).sum(1).clamp_min(1e-6)
    delta = ((altered - x).abs() * m).flatten(1).sum(1) / w
    return m * (delta / tau).clamp(0, 1).view(-1, *[1] * (m.dim() - 1))


def degrade(x: torch.Tensor, rng: torch.Generator, blur: float, noise: float) -> torch.Tensor:
    """Each image of ``x`` (B, C, *S) smoothed by σ ~ U(0, ``blur``) voxels and given Gaussian noise of SD ~ U(0, ``noise``),
    each with probability ½ (unchanged when both are 0): training sees many scanners' noise and sharpness as normal."""
    if blur <= 0 and noise <= 0:
        return x
    out = x.clone()
    for i in range(len(x)):
        if blur > 0 and float(_rand(rng, 1)) < 0.5:
            out[i] = gaussian_smooth(out[i], float(_uniform(rng, 0.0, blur, 1)))
        if noise > 0 and float(_rand(rng, 1)) < 0.5:
            sd = float(_uniform(rng, 0.0, noise, 1))
            out[i] = out[i] + sd * torch.randn(out[i].shape, generator=rng, dtype=torch.float64).to(out.dtype)
    return out


# --------------------------------------------------------------------------------------------
# the detector
# --------------------------------------------------------------------------------------------


def synth_spec(p: SynthParams) -> SynthSpec:
    """The generator's distribution from the detector's parameters (``model`` section)."""
    return SynthSpec(radius=tuple(p.radius), blob=p.blob, edge=tuple(p.edge), alpha=tuple(p.alpha),
                     clean_fraction=p.clean_fraction, centre_margin=p.centre_margin, shapes=tuple(p.shapes), fills=tuple(p.fills),
                     radius_scale=p.radius_scale, centre_below=p.centre_below)


def bottom_layer(unet: UNet) -> nn.Module:
    """The bottom (deepest) layer of a MONAI UNet: follow the nested skip connections."""
    m = unet.model
    while isinstance(m, nn.Sequential) and len(m) == 3 and isinstance(m[1], SkipConnection):
        m = m[1].submodule
    return m


def top_mean(a: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean of the largest ``fraction`` of each row of (B, N) (at least one value)."""
    k = max(1, int(round(fraction * a.shape[1])))
    return a.topk(k, dim=1).values.mean(1)


def trimmed_mean(per: torch.Tensor, rank_by: torch.Tensor, trim: float) -> torch.Tensor:
    """Mean of ``per`` over the samples of the batch left after removing the ``trim`` fraction with
    the highest ``rank_by`` (at least one kept; no gradient reaches the removed ones).

    A trimmed loss (after Shen & Sanghavi 2019, iterative trimmed loss minimisation) against
    anomalies hidden in the training data. Ranked by the loss on the *unaltered* voxels: an anomalous
    training image is a blend destination whose own lesion the network is taught to call native
    (target 0), so that part of its loss is high once the network knows what normal looks like,
    while the whole pretext loss is dominated by how hard the synthetic blend is. Measured with a
    model trained on clean PneumoniaMNIST normals: pneumonia images mixed into its training set were
    in their batch's top 10 % by the native-voxel loss 89 % of the time, by the whole loss 27 %
    (docs/BENCHMARK_NOTES.md, "Contamination").
    """
    if trim <= 0:
        return per.mean()
    keep = max(1, len(per) - int(trim * len(per)))
    return per[rank_by.detach().topk(keep, largest=False).indices].mean()


@register_2d_3d("synth")
class SynthDetector(Detector):
    """Synthetic-anomaly (foreign patch) segmentation on MONAI UNet"""


    def __init__(self, params: SynthParams, in_channels: int, patch_size: int) -> None:
        super().__init__(params, in_channels, patch_size)
        self.net = UNet(spatial_dims=self.spatial_dims, in_channels=in_channels, out_channels=1, channels=tuple(params.channels),
                        strides=tuple(params.strides), num_res_units=params.num_res_units,
                        norm=("instance", {"affine": True}) if params.norm == "instance" else "batch")
        if self.spatial_dims == 3:  # oneDNN's 3D convolutions are ~1.4× faster channels-last on the CPU (training step, 28³, batch 16)
            self.net.to(memory_format=torch.channels_last_3d)
        self.density = FeatureDensity(params.knn_k)
        self._rng: torch.Generator | None = None
        self._bottom = bottom_layer(self.net)
        self._feats: torch.Tensor | None = None
        self._bottom.register_forward_hook(self._keep_features)

    def _keep_features(self, module, inputs, output):
        self._feats = output

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (B, 1, *S), bottleneck features (B, channels[-1]))``: the bottom layer's output,
        globally average-pooled (kept by a forward hook)."""
        if x.dim() == 5:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        logits = self.net(x).contiguous()
        feats, self._feats = self._feats, None
        return logits, feats.flatten(2).mean(2)

    def on_epoch_start(self, epoch, epochs):
        # drawn from the global RNG, which the train stage seeds per (seed, epoch): resumable
        self._rng = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))

    def pretext_losses(self, x: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample pretext loss of a batch altered with ``rng``, and per-sample loss on the voxels
        left unaltered (target 0: content the network is taught to call native)."""
        x = plain(x)
        p = self.params
        with torch.autocast(x.device.type, enabled=False):  # the synthetic anomalies in full precision under train.precision bf16
            xa, target, info = synth_blend(x, rng, synth_spec(p))
            if p.target == "visibility":
                target = visibility_target(x, xa, info["masks"], p.visibility_tau)
            xa = degrade(xa, rng, p.degrade_blur, p.degrade_noise)
        logits, _ = self.forward_features(xa)
        logits = logits.float()
        if self.params.loss == "bce":
            per = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        else:
            per = (torch.sigmoid(logits) - target).pow(2)
        native = (target == 0).flatten(1).to(per.dtype)
        return per.flatten(1).mean(1), (per.flatten(1) * native).sum(1) / native.sum(1).clamp_min(1)

    def loss(self, x):
        if self._rng is None:
            self._rng = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
        per, native = self.pretext_losses(x, self._rng)
        return trimmed_mean(per, native, self.params.trim), {}

    def validation_loss(self, x):
        return self.pretext_losses(x, torch.Generator().manual_seed(self.params.val_seed))[0]

    @torch.inference_mode()
    def features(self, x: torch.Tensor, chunk: int = 128) -> torch.Tensor:
        return torch.cat([self.forward_features(plain(x[i : i + chunk]))[1] for i in range(0, len(x), chunk)])

    @torch.inference_mode()
    def fit_after_training(self, train_x):
        was = self.training
        self.eval()
        f = self.features(train_x)
        self.train(was)
        return self.density.fit(f)

    @torch.inference_mode()
    def score(self, x, mc_samples, generator):
        x = plain(x)
        logits, feats = self.forward_features(x)
        a = torch.sigmoid(logits)
        flat = a.flatten(1)
        f1, f2 = self.params.top_fractions
        scores = {"synth_mean": flat.mean(1), "synth_top1": top_mean(flat, f1), "synth_top10": top_mean(flat, f2),
                  "synth_max": flat.amax(1), "feat_knn": self.density.knn(feats), "feat_maha": self.density.maha(feats)}
        return ScoreOutput(scores=scores, residual=a.expand(-1, x.shape[1], *a.shape[2:]).contiguous())


Synth2D, Synth3D = DETECTORS["synth2d"], DETECTORS["synth3d"]
