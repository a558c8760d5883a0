"""BiGAN/ALI: an encoder and a generator judged by a joint (x, z) discriminator."""
