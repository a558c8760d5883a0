"""Intensity-statistic baseline: one statistic of the patch, z-scored against the training normals."""
