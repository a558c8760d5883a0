"""Parts shared by several detector families (torch): networks, losses, densities and family bases.

- :mod:`models.nets.blocks`: the GAN-family networks (MONAI Generator/Critic/Regressor or DCGAN-style) and :func:`~models.nets.blocks.plain`;
- :mod:`models.nets.gan_losses`: the WGAN-GP gradient penalty and critic loss;
- :mod:`models.nets.feature_density`: k-NN and Mahalanobis distances to training features;
- :mod:`models.nets.complexity`: an image's PNG length (input complexity);
- :mod:`models.nets.wgan_gp`, :mod:`models.nets.adversarial_ae`, :mod:`models.nets.closed_form`:
  the base classes of families that share training code (anogan/fanogan; bigan/alphagan; the
  closed-form baselines).
"""
