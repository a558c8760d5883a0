"""A WGAN-GP with a jointly trained encoder (Berg et al. 2019)."""
