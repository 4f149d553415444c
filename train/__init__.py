"""Training, evaluation and archiving for the MNIST digit GAN."""
