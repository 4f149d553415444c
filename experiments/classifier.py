"""The MNIST classifier that `make evaluate` uses as its feature extractor (no Inception download)."""
import torch
from torch import nn

FEATURES = 128


class MnistClassifier(nn.Module):
    """A small CNN; `embed` gives the penultimate features that FID compares."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 32 x 14 x 14
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 64 x 7 x 7
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, FEATURES), nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(FEATURES, 10)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(images)))


CHUNK = 100  # images per pass: small enough to stay in the CPU's cache


def chunks(model: MnistClassifier, images: torch.Tensor) -> list[torch.Tensor]:
    """`images` in CHUNKs, the model's weights and the images channels-last: on a CPU, convolutions in that
    layout run several times faster than in the default one, with the same readings (the model changes in place:
    the same numbers, in another layout)."""
    model.to(memory_format=torch.channels_last)
    return [chunk.contiguous(memory_format=torch.channels_last) for chunk in images.split(CHUNK)]


@torch.inference_mode()
def predict(model: MnistClassifier, images: torch.Tensor) -> torch.Tensor:
    """The digit `model` reads in each image."""
    return torch.cat([model(chunk).argmax(1) for chunk in chunks(model, images)])
