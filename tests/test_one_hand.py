"""make evaluate's "One hand" measures on cases whose answer is known."""
import pytest
import torch
from torch import nn

from experiments.one_hand import hand_correlations, mean_correlation_across_digits, read_right, style_measures


def bar(thickness: int = 2, shear: float = 0.0, length: int = 20) -> torch.Tensor:
    """A 1 x 28 x 28 stroke from row 4 down `length` rows; `shear` pixels to the right per row up."""
    image = torch.zeros(1, 28, 28)
    for row in range(4, 4 + length):
        left = round(13 + shear * (14 - row))
        image[0, row, left:left + thickness] = 1.0
    return image


def test_style_measures_of_known_strokes():
    upright, slanted, back, thick = bar(), bar(shear=0.3), bar(shear=-0.3), bar(thickness=5)
    measures = style_measures(torch.stack([upright, slanted, back, thick]))
    assert measures["slant"][0].item() == pytest.approx(0.0, abs=1e-9)
    assert measures["slant"][1] > 0.2 and measures["slant"][2] < -0.2  # to the right, to the left
    assert measures["ink"][3] == pytest.approx(2.5 * measures["ink"][0].item())
    assert measures["width"][3] > measures["width"][0] and measures["width"][1] > measures["width"][0]


def test_correlation_across_digits_is_one_for_a_hand_that_decides_and_zero_for_none():
    hand = torch.randn(500, 1, generator=torch.Generator().manual_seed(0))
    assert mean_correlation_across_digits(hand.repeat(1, 10) * torch.arange(1.0, 11.0)) == pytest.approx(1.0)
    independent = torch.randn(500, 10, generator=torch.Generator().manual_seed(1))
    assert abs(mean_correlation_across_digits(independent)) < 0.05


class StrokeWriter(nn.Module):
    """A 'generator' whose strokes' slant comes from the hand (noise[0]) or, with own_slant, from each call."""

    latent_dim, num_classes, noise, noise_std = 4, 10, "normal", 1.0

    def __init__(self, own_slant: bool = False) -> None:
        super().__init__()
        self.own_slant, self.rng = own_slant, torch.Generator().manual_seed(2)

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        slants = torch.randn(len(noise), generator=self.rng) if self.own_slant else noise[:, 0]
        return torch.stack([bar(shear=0.2 * s.item(), length=10 + d.item()) for s, d in zip(slants, labels)])


def test_hand_correlations_see_whether_the_noise_or_the_digit_holds_the_style():
    assert hand_correlations(StrokeWriter(), hands=60)["slant"] > 0.9
    assert abs(hand_correlations(StrokeWriter(own_slant=True), hands=60)["slant"]) < 0.3


class ReadsInk(nn.Module):
    """A 'classifier' that reads the digit off the ink's mean: image d is filled with d / 10."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return -((images.mean((1, 2, 3))[:, None] * 10 - torch.arange(10.0)) ** 2)


def test_a_number_is_read_right_only_when_every_digit_is():
    digits = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9], [0, 0, 0]])
    images = (digits.float() / 10)[..., None, None, None].expand(4, 3, 1, 28, 28).clone()
    assert read_right(ReadsInk(), images, digits) == 1.0
    images[1, 2] = 0.7  # one digit of the second number misread as a 7
    assert read_right(ReadsInk(), images, digits) == 0.75
