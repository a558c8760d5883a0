"""Mahalanobis baseline: the squared Mahalanobis distance of a patch's pixels to the normal training patches."""
