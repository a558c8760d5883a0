"""k-NN baseline: distances in PCA space to the normal training patches."""
