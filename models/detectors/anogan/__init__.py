"""AnoGAN: a WGAN-GP with a latent search for each query."""
