"""f-AnoGAN: a WGAN-GP followed by an izi_f encoder."""
