"""The VAE detector (MONAI VarAutoEncoder): Monte-Carlo ELBO, IWAE and latent-density scores."""
