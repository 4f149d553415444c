"""Finding a hand: the noise vector that most probably drew the digits a person uploaded (GAN inversion).

A hand is one noise vector: the same vector writes every digit. `find_hand` minimises each uploaded digit's mean
squared pixel error against the generator's drawing of it, summed, plus the noise's own prior, with SciPy's L-BFGS-B
from the mean hand. Several digits of one hand pin it down far better than one; what they do not show of it stays
the mean hand's, so the other digits are not written with strokes the search made up.

Each step needs the loss and its gradient with respect to the noise. `LossAndGradient` computes both in one forward
pass of plain operations (the generator's backward pass written out), so that ONNX Runtime, which computes no
gradients of its own, can run it: `make archive` exports it beside the generator (SEARCH_ONNX_FILE), and a worker on
a CPU searches with it, several times faster than PyTorch's autograd on one small image. PyTorch runs the same graph
on a GPU, and autograd serves any other generator.
"""
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

try:
    from .generator import IMAGE_SHAPE, Generator  # as handler.search: training, the tools, the tests
except ImportError:
    from generator import IMAGE_SHAPE, Generator  # TorchServe imports the archive's files as top-level modules

# The search's settings, measured in docs/quality.md's "Your hand" section.
HAND_ITERATIONS = 30  # L-BFGS-B iterations for one digit (each one or a few passes through the generator) ...
NUMBER_ITERATIONS = 50  # ... and for several: each digit tells more of the hand, which takes more steps to reach
# How much the noise's own prior weighs against the pixels: higher keeps the hand nearer the mean hand, whose other
# digits are more legible and keep the drawn style better, but copy the upload less closely (measured: 0.003).
HAND_PRIOR = 0.003
SEARCH_ONNX_FILE = "hand_search.onnx"  # LossAndGradient of the served generator, in the .mar
SEARCH_INPUTS = ("noise", "labels", "target")  # LossAndGradient's arguments, and the ONNX export's input names


class LossAndGradient(nn.Module):
    """The search's loss for one hand and `k` uploaded digits, and its gradient with respect to the hand, as a
    forward pass (no autograd): the generator's layers run forwards, then its backward pass is written out layer by
    layer. For the conditional conv generator (handler/generator.py); tests/test_search.py holds it to autograd.

    forward(noise 1 x latent_dim, labels k, target k x 1 x 28 x 28) -> (loss: a scalar, gradient: 1 x latent_dim)
    """

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        if getattr(generator, "arch", None) != "conv" or generator.label_embedding is None:
            raise ValueError("LossAndGradient is written for the conditional conv generator")
        self.generator = generator
        normal = generator.noise == "normal"  # uniform noise has no prior term: its bounds are the search's
        self.prior = HAND_PRIOR / generator.noise_std ** 2 if normal else 0.0

    def _norm(self, x: torch.Tensor, index: int, norm: nn.GroupNorm, labels: torch.Tensor) -> tuple:
        """GroupNorm and the digit's scale and shift (or its own affine): (out, normalised, std, scale)."""
        count, channels = x.shape[:2]
        grouped = x.reshape(count, norm.num_groups, -1)
        mean = grouped.mean(-1, keepdim=True)
        std = torch.sqrt(grouped.var(-1, unbiased=False, keepdim=True) + norm.eps)
        normed = ((grouped - mean) / std).reshape(x.shape)
        if self.generator.class_norms is not None:
            scale, shift = self.generator.class_norms[index](labels)[:, :, None, None].chunk(2, dim=1)
            scale = 1 + scale
        else:
            scale, shift = norm.weight[None, :, None, None], norm.bias[None, :, None, None]
        return normed * scale + shift, normed, std, scale

    @staticmethod
    def _norm_backward(grad: torch.Tensor, normed: torch.Tensor, std: torch.Tensor, groups: int) -> torch.Tensor:
        """GroupNorm's input gradient from its output's (before the scale), per group of count elements:
        (g - mean(g) - normed * mean(g * normed)) / std."""
        count = grad.shape[0]  # not len(): a Python int would fix the count of digits in the ONNX export
        g, n = grad.reshape(count, groups, -1), normed.reshape(count, groups, -1)
        return ((g - g.mean(-1, keepdim=True) - n * (g * n).mean(-1, keepdim=True)) / std).reshape(grad.shape)

    def forward(self, noise: torch.Tensor, labels: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
        net, count = self.generator.net, labels.shape[0]
        linear, norm0, up1, norm1, up2 = net[0], net[2], net[4], net[5], net[7]
        inputs = torch.cat([noise.expand(count, -1), self.generator.label_embedding(labels)], dim=1)
        y0, n0, std0, scale0 = self._norm(net[1](linear(inputs)), 0, norm0, labels)  # net[1]: Unflatten
        y1, n1, std1, scale1 = self._norm(up1(torch.relu(y0)), 1, norm1, labels)
        drawn = torch.sigmoid(up2(torch.relu(y1)))
        error = drawn - target
        loss = (error ** 2).mean((1, 2, 3)).sum() + self.prior * (noise ** 2).mean()
        # Backwards: sigmoid, the last transposed convolution (its adjoint is a convolution with the same weight),
        # ReLU, norm, the first transposed convolution, ReLU, norm, the linear layer; the prior's own gradient.
        grad = 2 * error / error[0].numel() * drawn * (1 - drawn)
        grad = F.conv2d(grad, up2.weight, stride=2, padding=1)
        grad = self._norm_backward(grad * (y1 > 0) * scale1, n1, std1, norm1.num_groups)
        grad = F.conv2d(grad, up1.weight, stride=2, padding=1)
        grad = self._norm_backward(grad * (y0 > 0) * scale0, n0, std0, norm0.num_groups)
        grad = grad.reshape(count, -1) @ linear.weight
        gradient = grad[:, :noise.shape[1]].sum(0, keepdim=True) + 2 * self.prior * noise / noise.numel()
        return loss, gradient


Evaluate = Callable[[np.ndarray], tuple[float, np.ndarray]]


def find_hand(model: Generator, images: torch.Tensor, digits: Union[int, Sequence[int]],
              iterations: Optional[int] = None, session: Any = None) -> torch.Tensor:
    """The noise vector (one hand) that most probably drew `images` (k x 28 x 28 in [0, 1], or one 28 x 28) as
    `digits` (k digits, or one): the loss above, minimised by L-BFGS-B from the mean hand for `iterations`
    (HAND_ITERATIONS for one digit, NUMBER_ITERATIONS for more). `session`: an ONNX Runtime session of the
    generator's LossAndGradient export, which runs the steps; without it PyTorch does, on the model's device.
    Deterministic: the same images and digits give the same vector, bit for bit, on one thread. Comes back on the CPU.
    """
    # SciPy's L-BFGS-B, not torch.optim's: an Optimizer's first use imports TorchDynamo (seconds, in every worker).
    from scipy.optimize import minimize

    normal = model.noise == "normal"
    target = images.detach().to("cpu", torch.float32).reshape(-1, *IMAGE_SHAPE).contiguous()
    labels = torch.as_tensor(digits, dtype=torch.long).reshape(-1)
    if len(labels) != len(target):
        raise ValueError(f"{len(target)} images, but {len(labels)} digits: one digit per image")
    if iterations is None:
        iterations = HAND_ITERATIONS if len(labels) == 1 else NUMBER_ITERATIONS
    with torch.inference_mode(False), _without_onednn():
        evaluate = _onnx_steps(session, labels, target) if session is not None else _torch_steps(model, labels, target)
        found = minimize(evaluate, np.full(model.latent_dim, 0.0 if normal else 0.5), jac=True, method="L-BFGS-B",
                         bounds=None if normal else [(0.0, 1.0)] * model.latent_dim,
                         options={"maxiter": iterations, "maxfun": iterations * 5 // 4})
    return torch.from_numpy(found.x.astype(np.float32))


def _onnx_steps(session: Any, labels: torch.Tensor, target: torch.Tensor) -> Evaluate:
    feeds = {"labels": labels.numpy(), "target": target.numpy()}

    def evaluate(values: np.ndarray) -> tuple[float, np.ndarray]:
        loss, gradient = session.run(None, {"noise": values.astype(np.float32)[None], **feeds})
        return float(loss), gradient.ravel().astype(np.float64)

    return evaluate


def _torch_steps(model: Generator, labels: torch.Tensor, target: torch.Tensor) -> Evaluate:
    device = next(model.parameters()).device
    labels, target = labels.to(device), target.to(device)
    try:
        graph = LossAndGradient(model)
    except ValueError:  # another generator: autograd's gradient
        graph = None

    def evaluate(values: np.ndarray) -> tuple[float, np.ndarray]:
        noise = torch.from_numpy(values.astype(np.float32)).to(device).view(1, -1)
        if graph is not None:
            with torch.no_grad():
                loss, gradient = graph(noise, labels, target)
        else:
            with torch.enable_grad():
                noise.requires_grad_(True)
                loss = ((model(noise.expand(len(labels), -1), labels) - target) ** 2).mean((1, 2, 3)).sum()
                if model.noise == "normal":
                    loss = loss + HAND_PRIOR * (noise ** 2).mean() / model.noise_std ** 2
                gradient, = torch.autograd.grad(loss, noise)  # the noise's gradient only, not the weights'
        return loss.item(), gradient.double().cpu().numpy().ravel()

    return evaluate


@contextmanager
def _without_onednn() -> Iterator[None]:
    """oneDNN's convolutions cost more than they save on one small image: PyTorch's own kernels step faster."""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled
