"""Property test (hypothesis): cube extraction over random volume shapes and centres."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.errors import ExtractionError
from preprocessing.cubes import cube_start, cut_cube


@settings(max_examples=300, deadline=None)
@given(shape=st.tuples(*[st.integers(1, 40)] * 3), centre=st.tuples(*[st.integers(-40, 80)] * 3), size=st.sampled_from([4, 8, 9, 32]))
def test_cut_cube_never_crashes_and_flags_padding_exactly(shape, centre, size):
    vol = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)  # zyx, every voxel distinct
    start = cube_start(np.array(centre), size)
    start_zyx = start[::-1]
    inside = np.all(start_zyx >= 0) and np.all(start_zyx + size <= np.array(shape))
    overlaps = np.all(start_zyx < np.array(shape)) and np.all(start_zyx + size > 0)
    if not overlaps:
        with pytest.raises(ExtractionError):
            cut_cube(vol, start, size, -1)
        return
    cube, padded = cut_cube(vol, start, size, -1)
    assert cube.shape == (size,) * 3
    assert padded == (not inside)
    # every voxel is either the pad value or the volume voxel at the same world index
    zz, yy, xx = np.meshgrid(*[np.arange(size)] * 3, indexing="ij")
    src = np.stack([zz + start_zyx[0], yy + start_zyx[1], xx + start_zyx[2]])
    valid = np.all((src >= 0) & (src < np.array(shape)[:, None, None, None]), axis=0)
    assert np.array_equal(cube[valid], vol[src[0][valid], src[1][valid], src[2][valid]])
    assert np.all(cube[~valid] == -1)
