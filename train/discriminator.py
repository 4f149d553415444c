"""The discriminator: used by training only, never served."""
from typing import Optional

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from handler.generator import MLP_HIDDEN


class Discriminator(nn.Module):
    """Scores 1x28x28 images: real (high) or generated (low).

    arch "dcgan": a spectrally normalised conv net returning logits, with a projection
      term (Miyato & Koyama, 2018) so a conditional score says "a real *this digit*".
    arch "mlp" / "mlp-sigmoid": the tutorial's networks, returning probabilities
      (they end in Sigmoid, as the tutorial's BCE/MSE losses expect).
    """

    def __init__(self, arch: str = "dcgan", num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.arch = arch
        if arch == "dcgan":
            self.features = nn.Sequential(
                spectral_norm(nn.Conv2d(1, width, 4, 2, 1)),  # w x 14 x 14
                nn.LeakyReLU(0.2),
                spectral_norm(nn.Conv2d(width, 2 * width, 4, 2, 1)),  # 2w x 7 x 7
                nn.LeakyReLU(0.2),
                nn.Flatten(),
            )
            feature_dim = 2 * width * 7 * 7
            self.score = spectral_norm(nn.Linear(feature_dim, 1))
            self.label_projection = (
                spectral_norm(nn.Embedding(num_classes, feature_dim)) if num_classes else None
            )
        elif arch in ("mlp", "mlp-sigmoid"):
            hidden = [nn.LeakyReLU(0.02), nn.LayerNorm(MLP_HIDDEN)] if arch == "mlp" else [nn.Sigmoid()]
            self.features = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, MLP_HIDDEN), *hidden)
            self.score = nn.Sequential(nn.Linear(MLP_HIDDEN, 1), nn.Sigmoid())
            self.label_projection = None
        else:
            raise ValueError(f"unknown discriminator arch {arch!r}")

    def forward(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        features = self.features(images)
        score = self.score(features)
        if self.label_projection is not None:
            score = score + (self.label_projection(labels) * features).sum(dim=1, keepdim=True)
        return score
