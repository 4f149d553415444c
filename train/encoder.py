"""The encoder: used by training only, never served.

It maps a real digit (and its label) to a distribution over G's latent space, and G must redraw
the digit from a sample of it (a conditional VAE-GAN, Larsen et al., 2016). A GAN alone may drop
a rare way of writing a digit (a 7 with a bar) without D noticing; the reconstruction makes G
reach every training digit from some latent, and the KL term keeps those latents where random
noise lands.
"""
import torch
from torch import nn


class Encoder(nn.Module):
    """1x28x28 image + digit label -> (mean, log-variance) of a latent_dim Gaussian."""

    def __init__(self, latent_dim: int = 100, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.label_map = nn.Embedding(num_classes, 28 * 28)  # the digit as an extra input channel, as in D
        self.net = nn.Sequential(
            nn.Conv2d(2, width, 4, 2, 1), nn.LeakyReLU(0.2),  # w x 14 x 14
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.GroupNorm(8, 2 * width), nn.LeakyReLU(0.2),  # 2w x 7 x 7
            nn.Flatten(),
            nn.Linear(2 * width * 7 * 7, 2 * latent_dim),
        )

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([images, self.label_map(labels).view(-1, 1, 28, 28)], dim=1)
        mean, log_var = self.net(x).chunk(2, dim=1)
        return mean, log_var
