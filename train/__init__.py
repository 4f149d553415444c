"""Training of the MNIST digit GAN: settings (config), data, the discriminator, the loop (train), artifacts."""
