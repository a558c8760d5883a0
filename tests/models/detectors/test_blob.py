"""The blob (Hessian dot-filter) baseline: a ball answers, a line and a plate do not, and the map peaks at the ball."""

import numpy as np
import pytest
import torch

from models.detectors.blob.model import Blob2D, Blob3D, dot_map
from models.detectors.blob.params import BlobParams

N = 28


def _shapes(dims: int) -> dict[str, np.ndarray]:
    g = np.mgrid[(slice(0, N),) * dims].astype(np.float32) - N // 2
    r2 = (g ** 2).sum(0)
    line = (g[1:] ** 2).sum(0) <= 4  # along axis 0, radius 2
    plate = np.abs(g[-1]) <= 1
    return {"ball": (r2 <= 16).astype(np.float32), "line": line.astype(np.float32), "plate": plate.astype(np.float32)}


@pytest.mark.parametrize("dims", [2, 3])
def test_ball_answers_line_and_plate_do_not(dims):
    s = _shapes(dims)
    ball = dot_map(s["ball"][None], BlobParams().sigmas)
    assert ball.max() > 0.1
    for other in ("plate",) + (("line",) if dims == 3 else ()):
        assert dot_map(s[other][None], BlobParams().sigmas).max() < 0.05 * ball.max()


def test_map_peaks_at_an_off_centre_ball_and_the_score_ranks_it():
    g = np.mgrid[:N, :N, :N].astype(np.float32)
    centre = np.array([9, 17, 12])
    ball = ((g - centre[:, None, None, None]) ** 2).sum(0) <= 9
    x = np.where(ball, 0.8, 0.1).astype(np.float32)
    m = dot_map(x[None], BlobParams().sigmas)
    assert np.abs(np.array(np.unravel_index(m.argmax(), m.shape)) - centre).max() <= 1
    model = Blob3D(BlobParams(), 1, N).eval()
    centred = np.roll(x, tuple(N // 2 - centre), axis=(0, 1, 2))
    out = model.score(torch.from_numpy(np.stack([x, centred])[:, None]), 1, torch.Generator())
    s = out.scores["blob"]
    assert s[1] > 0.1 and s[0] < 0.3 * s[1]  # the score looks at the centre only
    assert out.residual.shape == (2, 1, N, N, N)


def test_blob2d_builds_and_scores():
    s = _shapes(2)["ball"]
    model = Blob2D(BlobParams(name="blob2d"), 3, N).eval()
    x = torch.from_numpy(np.repeat(s[None, None], 3, 1))
    assert float(model.score(x, 1, torch.Generator()).scores["blob"][0]) > 0.1


@pytest.mark.parametrize("sigma", [1.0, 2.5])
def test_hessian_matches_scikit_image_away_from_the_border(sigma):
    """The fast Gaussian-derivative Hessian equals scikit-image's (an independent implementation) inside the patch."""
    from scipy import ndimage
    from skimage.feature import hessian_matrix

    from models.detectors.blob.model import hessian

    x = ndimage.gaussian_filter(np.random.default_rng(0).random((N, N, N)), 1.5).astype(np.float32)
    ref = hessian_matrix(x, sigma=sigma, mode="reflect", order="rc", use_gaussian_derivatives=True)
    got = hessian(x, sigma)
    inner = (slice(10, -10),) * 3
    for r, g in zip(ref, got):
        assert np.abs(g[inner] - r[inner]).max() <= 0.02 * np.abs(r[inner]).max()


@pytest.mark.parametrize("dims", [2, 3])
def test_closed_form_eigenvalues_match_numpy(dims):
    from models.detectors.blob.model import symmetric_eigvals_extremes

    rng = np.random.default_rng(1)
    m = rng.normal(size=(500, dims, dims))
    m = m + m.transpose(0, 2, 1)
    m[:5] = np.eye(dims) * 0.3  # p = 0: a multiple of the identity
    m[5:10, 0, 0] = m[5:10, 1, 1]  # repeated eigenvalues nearby
    iu = np.triu_indices(dims)
    low, high = symmetric_eigvals_extremes([m[:, a, b] for a, b in zip(*iu)])
    ref = np.linalg.eigvalsh(m)
    np.testing.assert_allclose(low, ref[:, 0], atol=1e-9)
    np.testing.assert_allclose(high, ref[:, -1], atol=1e-9)
