"""Transformation prediction (GEOM; Golan & El-Yaniv 2018, Hendrycks et al. 2019), 2D and 3D.

A classifier C (MONAI ``Classifier``: strided residual units, then a linear layer) learns which of
T transformations t_k was applied to a normal image:

- 2D: the 4 rotations by 0/90/180/270° × {no flip, horizontal flip}: T = 8 (the dihedral group);
- 3D: the 24 proper rotations of a cube (axis permutations with axis flips, determinant +1):
  T = 24 (the rotation group of the cube, :func:`cube_rotations`).

Training uses every transform of every image in the batch (or a random subset of
``transforms_per_image`` per image), with cross-entropy; the validation loss is the mean
cross-entropy over all T transforms of each normal validation patch (early stopping on it).
Random axis flips in the training augmentation would make the classes ambiguous (a flip composed
with a rotation is another class, or an improper rotation), so GEOM should run with
``train.flips: false``.

Scores (higher = more anomalous): ``geom`` = −(1/T) Σ_k log C(t_k(x))_k; ``geom_err`` = 1 − the
fraction of the T transforms classified correctly; ``feat_knn`` / ``feat_maha`` = k-NN and
LedoitWolf Mahalanobis distances of the classifier's penultimate features (the flattened output
of its convolutional trunk) of the untransformed patch to those of the normal training patches
(:mod:`models.nets.feature_density`); with ``feature_views: all`` the features are the trunk outputs of
all T views, each globally average-pooled, concatenated. Residual map: |x − mean training patch| (GEOM has no map).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import Classifier

from models.detector import Detector, ScoreOutput
from models.detectors.geom.params import GeomParams
from models.nets.blocks import plain
from models.nets.feature_density import FeatureDensity
from models.registry import DETECTORS, register_2d_3d

Transform = tuple[tuple[int, ...], tuple[int, ...]]  # (spatial axis permutation, spatial axes flipped afterwards)


def signed_permutations(dims: int, proper_only: bool) -> list[Transform]:
    """The symmetries of a square/cube as (axis permutation, flipped axes), identity first, then the
    proper rotations (det +1), then (unless ``proper_only``) the improper ones (det −1).

    Each signed permutation matrix M (M[i, perm[i]] = ±1) is a symmetry of the cube; as an array
    operation: permute the spatial axes by ``perm``, then flip the axes whose sign is −1.
    """
    out = []
    for perm in itertools.permutations(range(dims)):
        for signs in itertools.product((1, -1), repeat=dims):
            m = np.zeros((dims, dims))
            for i, (p, s) in enumerate(zip(perm, signs)):
                m[i, p] = s
            det = round(np.linalg.det(m))
            if det == 1 or not proper_only:
                out.append((det, (tuple(perm), tuple(i for i, s in enumerate(signs) if s < 0))))
    out.sort(key=lambda d_t: (-d_t[0], d_t[1][0] != tuple(range(dims)) or len(d_t[1][1]) > 0, d_t[1]))
    return [t for _, t in out]


def cube_rotations() -> list[Transform]:
    """The 24 proper rotations of a cube (det +1 signed permutations), identity first."""
    return signed_permutations(3, proper_only=True)


def square_transforms() -> list[Transform]:
    """The 8 symmetries of a square, identity first: the 4 rotations by k·90° (det +1), then the 4
    reflections (det −1), i.e. each rotation composed with a horizontal flip."""
    return signed_permutations(2, proper_only=False)


def apply_transform(x: torch.Tensor, t: Transform) -> torch.Tensor:
    """Apply ``t`` to the spatial axes of a (B, C, *S) batch (cubic/square spatial shape)."""
    perm, flips = t
    y = x.permute(0, 1, *[2 + p for p in perm])
    if flips:
        y = y.flip([2 + a for a in flips])
    return y


def transforms_for(dims: int) -> list[Transform]:
    return square_transforms() if dims == 2 else cube_rotations()


@register_2d_3d("geom")
class GeomDetector(Detector):
    """Transformation prediction on a MONAI Classifier"""


    def __init__(self, params: GeomParams, in_channels: int, patch_size: int) -> None:
        super().__init__(params, in_channels, patch_size)
        self.transforms = transforms_for(self.spatial_dims)
        self.net = Classifier(in_shape=(in_channels, *([patch_size] * self.spatial_dims)), classes=len(self.transforms),
                              channels=tuple(params.channels), strides=tuple(params.strides), num_res_units=params.num_res_units,
                              norm=params.norm.upper(), dropout=params.dropout or None)
        self.density = FeatureDensity(params.knn_k)
        self.register_buffer("mean_image", torch.zeros(in_channels, *([patch_size] * self.spatial_dims)))

    @property
    def n_transforms(self) -> int:
        return len(self.transforms)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (B, T), penultimate features (B, F))``."""
        h = self.net.net(x)
        return self.net.final(h), h.flatten(1)

    def all_transforms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every transform of every image: ``(batch (T·B, C, *S), labels (T·B,))``, transform-major."""
        xs = torch.cat([apply_transform(x, t) for t in self.transforms])
        labels = torch.arange(self.n_transforms, device=x.device).repeat_interleave(len(x))
        return xs, labels

    def per_sample_ce(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T) cross-entropy of every transform of every image."""
        xs, labels = self.all_transforms(x)
        logits, _ = self.forward_features(xs)
        return F.cross_entropy(logits, labels, reduction="none").view(self.n_transforms, len(x)).T

    def loss(self, x):
        x = plain(x)
        r = self.params.transforms_per_image
        if r <= 0 or r >= self.n_transforms:
            xs, labels = self.all_transforms(x)
        else:  # a random subset of r transforms per image (global RNG, seeded per epoch by the train stage)
            ks = torch.stack([torch.randperm(self.n_transforms)[:r] for _ in range(len(x))])  # (B, r)
            xs = torch.cat([apply_transform(x[i : i + 1], self.transforms[int(k)]) for i in range(len(x)) for k in ks[i]])
            labels = ks.flatten().to(x.device)
        logits, _ = self.forward_features(xs)
        ce = F.cross_entropy(logits, labels)
        acc = (logits.argmax(1) == labels).float().mean()
        return ce, {"acc": acc}

    def validation_loss(self, x):
        return self.per_sample_ce(plain(x)).mean(1)

    def density_features(self, x: torch.Tensor, feats: torch.Tensor | None = None) -> torch.Tensor:
        """Features for the density scores of a batch ``x``; ``feats``: the trunk features of
        :meth:`all_transforms` of ``x`` when already computed (transform-major)."""
        if self.params.feature_views == "identity":
            return feats[: len(x)] if feats is not None else self.forward_features(x)[1]
        if feats is None:
            feats = self.forward_features(self.all_transforms(x)[0])[1]
        c = self.params.channels[-1]
        pooled = feats.view(self.n_transforms, len(x), c, -1).mean(3)  # (T, B, C): GAP per view
        return pooled.permute(1, 0, 2).reshape(len(x), -1)

    @torch.inference_mode()
    def features(self, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        return torch.cat([self.density_features(plain(x[i : i + chunk])) for i in range(0, len(x), chunk)])

    @torch.inference_mode()
    def fit_after_training(self, train_x):
        was = self.training
        self.eval()
        total = torch.zeros_like(self.mean_image, dtype=torch.float64)
        for i in range(0, len(train_x), 256):  # read in slices: train_x may be the train stage's stand-in (Detector.fit_after_training)
            total += plain(train_x[i : i + 256]).double().sum(0).to(total.device)
        self.mean_image.copy_((total / max(len(train_x), 1)).to(self.mean_image.dtype))
        terms = self.density.fit(self.features(train_x))
        self.train(was)
        return terms

    @torch.inference_mode()
    def score(self, x, mc_samples, generator):
        x = plain(x)
        xs, labels = self.all_transforms(x)
        logits, feats = self.forward_features(xs)
        logp = F.log_softmax(logits, 1)
        nll = -logp.gather(1, labels[:, None])[:, 0].view(self.n_transforms, len(x))  # (T, B)
        wrong = (logits.argmax(1) != labels).float().view(self.n_transforms, len(x))
        f0 = self.density_features(x, feats)  # transform 0 (the first B rows) is the identity
        scores = {"geom": nll.mean(0), "geom_err": wrong.mean(0), "feat_knn": self.density.knn(f0), "feat_maha": self.density.maha(f0)}
        return ScoreOutput.of(scores, x, self.mean_image.expand_as(x))


Geom2D, Geom3D = DETECTORS["geom2d"], DETECTORS["geom3d"]
