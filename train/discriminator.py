"""The discriminator: used by training only, never served."""
from typing import Optional

import torch
from torch import nn

from handler.generator import MLP_HIDDEN


class MinibatchStdDev(nn.Module):
    """Appends the batch's mean feature standard deviation as one more channel (Karras et al., 2018):
    a batch of near-copies looks different from a batch of real digits, so collapse is penalised."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        std = x.std(dim=0, unbiased=False).mean() if len(x) > 1 else x.new_zeros(())
        return torch.cat([x, std.expand(len(x), 1, *x.shape[2:])], dim=1)


class Discriminator(nn.Module):
    """Scores 1x28x28 images: real (high) or generated (low).

    arch "conv": a small conv net returning logits (N x 1, or N x (1 + classes) with
      aux_classifier); conditional on the digit through a learned label map (an extra input
      channel), with a minibatch-stddev channel against collapse.
    arch "mlp" / "mlp-sigmoid": the tutorial's networks, returning probabilities
      (they end in Sigmoid, as the tutorial's BCE/MSE losses expect).
    """

    def __init__(self, arch: str = "conv", num_classes: int = 10, width: int = 32, aux_classifier: bool = False,
                 projection: bool = False, spectral_norm: bool = False, label_blind_aux: bool = False) -> None:
        super().__init__()
        self.projection = self.aux_head = None
        if arch == "conv":
            # The digit enters as a learned 28x28 map, one more channel beside the image; or, with
            # `projection` (Miyato & Koyama, 2018), as the inner product of a digit embedding with D's features.
            self.label_map = nn.Embedding(num_classes, 28 * 28) if num_classes and not projection else None
            # Spectral norm bounds D's Lipschitz constant; it replaces BatchNorm, whose batch statistics
            # would differ between the all-real and all-fake halves.
            norm = (lambda m: nn.utils.parametrizations.spectral_norm(m)) if spectral_norm else (lambda m: m)
            self.features = nn.Sequential(
                norm(nn.Conv2d(2 if self.label_map is not None else 1, width, 4, 2, 1)),  # w x 14 x 14
                nn.LeakyReLU(0.2),
                norm(nn.Conv2d(width, 2 * width, 4, 2, 1)),  # 2w x 7 x 7
                nn.Identity() if spectral_norm else nn.BatchNorm2d(2 * width),
                nn.LeakyReLU(0.2),
                MinibatchStdDev(),  # (2w + 1) x 7 x 7
                nn.Flatten(),
            )
            # With aux_classifier, columns 1.. are digit logits (AC-GAN, Odena et al., 2017): G is then
            # also trained to make digits that D classifies as the requested one.
            outputs = 1 + (num_classes if aux_classifier and num_classes else 0)
            self.score = norm(nn.Linear((2 * width + 1) * 7 * 7, outputs))
            if projection and num_classes:
                self.projection = norm(nn.Embedding(num_classes, (2 * width + 1) * 7 * 7))
            # The digit head on features that saw the label channel can read the answer off that channel
            # and then pulls G nowhere; label_blind_aux gives it its own trunk that sees the image only.
            if label_blind_aux and aux_classifier and self.label_map is not None:
                self.aux_head = nn.Sequential(
                    nn.Conv2d(1, width, 4, 2, 1), nn.LeakyReLU(0.2),
                    nn.Conv2d(width, 2 * width, 4, 2, 1), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2),
                    nn.Flatten(), nn.Linear(2 * width * 7 * 7, num_classes),
                )
                # The digit logits come from this trunk, so the score layer gives the real/fake logit only. It
                # replaces the one built above rather than being built alone: that first draw keeps the random
                # stream, so `make train` still reproduces the served weights bit for bit.
                self.score = norm(nn.Linear((2 * width + 1) * 7 * 7, 1))
        elif arch in ("mlp", "mlp-sigmoid"):
            hidden = [nn.LeakyReLU(0.02), nn.LayerNorm(MLP_HIDDEN)] if arch == "mlp" else [nn.Sigmoid()]
            self.features = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, MLP_HIDDEN), *hidden)
            self.score = nn.Sequential(nn.Linear(MLP_HIDDEN, 1), nn.Sigmoid())
            self.label_map = None
        else:
            raise ValueError(f"unknown discriminator arch {arch!r}")

    def forward(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None, digits: bool = True) -> torch.Tensor:
        """Logits: column 0 real-vs-fake, then the digit's (when D has a digit head and `digits`)."""
        digit_logits = self.aux_head(images) if self.aux_head is not None and digits else None
        if self.label_map is not None:
            images = torch.cat([images, self.label_map(labels).view(-1, 1, 28, 28)], dim=1)
        features = self.features(images)
        scores = self.score(features)
        if digit_logits is not None:
            scores = torch.cat([scores, digit_logits], dim=1)
        if self.projection is not None:
            projected = (self.projection(labels) * features).sum(dim=1, keepdim=True)
            scores = torch.cat([scores[:, :1] + projected, scores[:, 1:]], dim=1)
        return scores
