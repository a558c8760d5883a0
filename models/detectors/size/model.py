"""Size baseline, 2D and 3D, closed form (:mod:`models.nets.closed_form`): a baseline a learned detector has to beat.

- ``size2d``/``size3d``: nodule size. Threshold the patch at ``threshold`` (model range; dense
  tissue = voxels above it), take the Euclidean distance transform of that binary image
  (``scipy.ndimage.distance_transform_edt``: each dense voxel's distance to the nearest non-dense
  voxel, with the patch border counted as non-dense so the value is defined by the patch alone),
  and report its maximum over the central ``(2·centre_radius + 1)^dims`` region (7³ / 7² by
  default): the radius, in voxels, of the largest ball of dense tissue centred within
  ``centre_radius`` voxels of the patch centre. At 1 mm voxels (LIDC cubes, LIDC-2D crops) it is
  millimetres. ``size`` = that radius (bigger = more anomalous). No masks and no labels are used;
  nothing is fitted. Residual map: the distance transform itself.

  Default threshold 0.45: in the LIDC-2D window [−1000, 400] HU it is −370 HU, the midpoint between
  aerated lung (≈ −850 HU → 0.11) and soft tissue (≈ +40 HU → 0.74); on the pre-normalised LIDC-3D
  cubes the histogram has its lung peak at ≈ 0.2 and its soft-tissue peak at ≈ 0.75 (midpoint 0.47).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from models.detector import ScoreOutput
from models.nets.closed_form import ClosedFormDetector
from models.registry import DETECTORS, register_2d_3d


def dense_radius_map(img: np.ndarray, threshold: float) -> np.ndarray:
    """Distance transform of ``mean over channels of img > threshold``, with the region outside the
    array counted as non-dense. ``img``: (C, *spatial) → (*spatial) float32."""
    dense = img.mean(0) > threshold
    padded = np.pad(dense, 1, constant_values=False)
    edt = distance_transform_edt(padded)
    return edt[tuple(slice(1, -1) for _ in range(dense.ndim))].astype(np.float32)


@register_2d_3d("size")
class SizeDetector(ClosedFormDetector):
    """Nodule size: largest ball of dense tissue centred near the patch centre"""


    def fit_arrays(self, train_x):
        x = self._check_input(train_x)
        s = self.radius(x)
        return {"loss": float(s.mean()), "train_size_mean": float(s.mean()), "train_size_std": float(s.std()) if len(s) > 1 else 0.0}

    def maps_and_radius(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = x.detach().float().cpu().numpy()
        c, r = self.patch_size // 2, self.params.centre_radius
        centre = tuple(slice(max(c - r, 0), c + r + 1) for _ in range(self.spatial_dims))
        maps = np.stack([dense_radius_map(img, self.params.threshold) for img in a]) if len(a) else np.zeros((0, *a.shape[2:]), np.float32)
        rad = maps[(slice(None), *centre)].reshape(len(a), -1).max(1) if len(a) else np.zeros(0, np.float32)
        return torch.from_numpy(maps).to(x.device), torch.from_numpy(rad.astype(np.float32)).to(x.device)

    def radius(self, x: torch.Tensor) -> torch.Tensor:
        return self.maps_and_radius(x)[1]

    def validation_loss(self, x):
        """The radius itself (there is nothing to fit; recorded for the curves)."""
        return self.radius(self._check_input(x))

    @torch.inference_mode()
    def score(self, x, mc_samples, generator):
        x = self._check_input(x).float()
        maps, rad = self.maps_and_radius(x)
        return ScoreOutput(scores={"size": rad}, residual=maps[:, None].expand(-1, x.shape[1], *maps.shape[1:]).contiguous())


Size2D, Size3D = DETECTORS["size2d"], DETECTORS["size3d"]
