"""PCA baseline: reconstruction error and distance in the principal subspace."""
