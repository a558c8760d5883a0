"""Whole-scan map ensemble (evaluation/map_ensemble.py): tail ranks within the lung region, Fisher-combined."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.map_ensemble import combine_maps, tail_p


def test_tail_ranks_are_empirical_p_values_in_the_region_and_one_outside():
    values = np.array([[0.0, 1.0, 2.0, 3.0], [9.0, 9.0, 9.0, 9.0]])
    region = np.array([[True, True, True, True], [False, False, False, False]])
    p = tail_p(values, region)
    assert p[0].tolist() == pytest.approx([5 / 5, 4 / 5, 3 / 5, 2 / 5])  # (1 + #{≥ v}) / (n + 1), n = 4
    assert (p[1] == 1).all()


def test_fisher_ranks_a_voxel_both_members_mark_above_one_that_only_one_marks():
    rng = np.random.default_rng(0)
    shape = (12, 12, 12)
    a, b = rng.normal(0, 1, shape), rng.normal(0, 1, shape) * 50 + 7  # other scales: only ranks count
    both, only_a, only_b = (3, 3, 3), (8, 8, 8), (3, 8, 3)
    a[both], b[both] = 4.0, 7 + 50 * 4.0  # high in both, though not the top of either
    a[only_a], b[only_b] = 10.0, 7 + 50 * 10.0  # the top of one member, ordinary in the other
    b[only_a], a[only_b] = 7.0, 0.0
    region = np.ones(shape, bool)
    region[0] = False
    m = combine_maps([a, b], region)
    assert m[both] > max(m[only_a], m[only_b])
    assert np.argmax(m) == np.ravel_multi_index(both, shape)
    assert (m[~region] == 0).all()
    # a member combined with itself ranks the voxels as that member does
    self_ranked = combine_maps([a, a], region)
    inside = region.ravel()
    assert np.array_equal(np.argsort(-self_ranked.ravel()[inside], kind="stable"), np.argsort(-a.ravel()[inside], kind="stable"))
