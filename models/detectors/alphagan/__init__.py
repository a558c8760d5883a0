"""α-GAN: an autoencoder with image and code discriminators (Rosca et al. 2017)."""
