"""The digit generator: the one network TorchServe builds from the `.mar`.

TorchServe imports this file (the archive's --model-file) as a top-level module and
requires it to define exactly one class. Training, evaluation and the handler all
import it, so the served network is the trained one by construction. The handler
builds it with the keyword arguments recorded in `generator.json`, so the served
settings are the training run's (train/config.py), whatever the defaults here.
"""
from typing import Optional

import torch
from torch import nn

MLP_HIDDEN = 200  # the tutorial's hidden layer width
IMAGE_SHAPE = (1, 28, 28)
METADATA_FILE = "generator.json"  # in the .mar: the settings the handler rebuilds the network from
# The ONNX export that scripts/archive.py packs into the .mar and the handler runs on a CPU.
ONNX_FILE = "generator.onnx"
ONNX_INPUTS = ("noise", "labels")  # forward's arguments; an unconditional generator has no labels


class Generator(nn.Module):
    """Maps latent noise (and, when conditional, a digit label) to 1x28x28 images in [0, 1].

    arch:
      "conv"        - a small DCGAN-style conv net, conditional on the digit (the project's default)
      "mlp"         - the tutorial's Linear, LeakyReLU(0.02), LayerNorm, Linear, Sigmoid
      "mlp-sigmoid" - the tutorial's first version: Linear, Sigmoid, Linear, Sigmoid
    noise: the latent distribution the network was trained on ("normal" or "uniform");
      kept here so every sampler draws from the same one.
    class_norm: conv, conditional: every GroupNorm gets a per-digit scale and shift (conditional
      normalisation), so the digit steers every layer, not only the input vector.
    noise_std: the standard deviation of the normal noise that `sample_latent` draws for serving,
      evaluation and pictures; training draws N(0, I). Above 1 it is the opposite of BigGAN's
      truncation trick: the latent's tails draw the rarer ways of writing a digit. Training records
      the spread the model is served with in generator.json (train/config.py); the default, 1, is what
      an archive from before this setting keeps drawing.
    """

    def __init__(
        self,
        arch: str = "conv",
        latent_dim: int = 100,
        num_classes: int = 10,
        width: int = 32,
        label_dim: int = 32,
        noise: str = "normal",
        class_norm: bool = True,
        noise_std: float = 1.0,
    ) -> None:
        super().__init__()
        if noise not in ("normal", "uniform"):
            raise ValueError(f"unknown noise distribution {noise!r}")
        self.arch, self.latent_dim, self.num_classes, self.noise = arch, latent_dim, num_classes, noise
        self.noise_std = checked_noise_std(noise, noise_std)
        if arch == "conv":
            self.label_embedding = nn.Embedding(num_classes, label_dim) if num_classes else None
            in_dim = latent_dim + (label_dim if num_classes else 0)
            # GroupNorm, not BatchNorm: a served image must not depend on batch statistics (and in
            # eval mode BatchNorm's running averages cut sample diversity).
            class_norm = class_norm and num_classes > 0
            # With class_norm the per-digit scale and shift replace GroupNorm's own affine parameters.
            self.net = nn.Sequential(
                nn.Linear(in_dim, 2 * width * 7 * 7, bias=False),
                nn.Unflatten(1, (2 * width, 7, 7)),  # 2w x 7 x 7
                nn.GroupNorm(8, 2 * width, affine=not class_norm),
                nn.ReLU(),
                nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False),  # w x 14 x 14
                nn.GroupNorm(8, width, affine=not class_norm),
                nn.ReLU(),
                nn.ConvTranspose2d(width, 1, 4, 2, 1),  # 1 x 28 x 28
                nn.Sigmoid(),
            )
            # One embedding per GroupNorm, holding [scale | shift] per digit; plain modules, not a layer
            # class of their own, since TorchServe's model file may define only one class.
            self.class_norms = None
            if class_norm:
                norms = [m.num_channels for m in self.net if isinstance(m, nn.GroupNorm)]
                self.class_norms = nn.ModuleList(nn.Embedding(num_classes, 2 * c) for c in norms)
                for embedding in self.class_norms:
                    nn.init.zeros_(embedding.weight)  # starts as plain GroupNorm (scale 1, shift 0)
        elif arch in ("mlp", "mlp-sigmoid"):
            if num_classes:
                raise ValueError(f"arch {arch!r} is unconditional: use num_classes=0")
            self.label_embedding = self.class_norms = None
            hidden = [nn.LeakyReLU(0.02), nn.LayerNorm(MLP_HIDDEN)] if arch == "mlp" else [nn.Sigmoid()]
            self.net = nn.Sequential(
                nn.Linear(latent_dim, MLP_HIDDEN),
                *hidden,
                nn.Linear(MLP_HIDDEN, 28 * 28),
                nn.Sigmoid(),
                nn.Unflatten(1, IMAGE_SHAPE),
            )
        else:
            raise ValueError(f"unknown generator arch {arch!r}")

    def forward(self, noise: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.label_embedding is not None:
            if labels is None:
                raise ValueError("this generator is conditional: pass the digit labels")
            noise = torch.cat([noise, self.label_embedding(labels)], dim=1)
        if self.class_norms is None:
            return self.net(noise)
        x, norms = noise, iter(self.class_norms)
        for layer in self.net:
            x = layer(x)
            if isinstance(layer, nn.GroupNorm):
                scale, shift = next(norms)(labels).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
                x = x * (1 + scale) + shift
        return x


def checked_noise_std(noise: str, noise_std: float) -> float:
    """`noise_std` when it is a spread `noise` noise can be drawn with, else ValueError."""
    if not noise_std > 0 or (noise == "uniform" and noise_std != 1):
        raise ValueError(f"noise_std must be positive, and 1 for uniform noise: got {noise_std!r}")
    return noise_std


def sample_latent(
    model: Generator, count: int, rng: torch.Generator, digit: Optional[int] = None,
    digits: Optional[torch.Tensor] = None, noise_std: Optional[float] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Draws `count` noise vectors and, for a conditional model, their labels: `digit` for every
    sample, or the given `digits` (one per sample; an unconditional model takes none), else uniform
    over the classes from `rng`. Normal noise has the model's `noise_std` unless `noise_std` is given.

    Everything comes from `rng`, so a seeded `rng` reproduces the same inputs on any
    machine; the tensors are on the CPU (move them to the model's device yourself).
    """
    noise = sample_noise(model, count, rng, noise_std)
    if not model.num_classes:
        if digit is not None:
            raise ValueError("this generator is unconditional: it cannot draw a requested digit")
        return noise, None
    if digits is not None:
        return noise, digits
    if digit is None:
        return noise, torch.randint(0, model.num_classes, (count,), generator=rng)
    return noise, torch.full((count,), digit, dtype=torch.long)


def sample_noise(model: Generator, count: int, rng: torch.Generator, noise_std: Optional[float] = None) -> torch.Tensor:
    """The first thing `sample_latent` draws from `rng`: `count` noise vectors. The i-th vector a seed draws is
    one hand: whatever digits it is asked for, the same vector writes them (the served `digits` field)."""
    draw = torch.randn if model.noise == "normal" else torch.rand
    noise = draw(count, model.latent_dim, generator=rng)
    if model.noise == "normal":
        noise = noise * (model.noise_std if noise_std is None else noise_std)
    return noise


def onnx_feeds(noise: torch.Tensor, labels: Optional[torch.Tensor] = None) -> dict:
    """forward's (CPU) arguments as the ONNX export's named inputs."""
    return {name: tensor.numpy() for name, tensor in zip(ONNX_INPUTS, (noise, labels)) if tensor is not None}
