"""handler/search.py: the search's loss and gradient written out as a forward pass (held to autograd's), its ONNX
export in the archive (held to PyTorch's), and the search on whatever device the model is on."""
import zipfile

import numpy as np
import onnxruntime
import pytest
import torch

from handler.generator import Generator, sample_noise
from handler.search import HAND_PRIOR, SEARCH_ONNX_FILE, LossAndGradient, find_hand


def autograd_loss_and_gradient(model: Generator, noise: torch.Tensor, labels: torch.Tensor,
                               target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The search's loss as plain PyTorch, and autograd's gradient of it."""
    noise = noise.clone().requires_grad_(True)
    loss = ((model(noise.expand(len(labels), -1), labels) - target) ** 2).mean((1, 2, 3)).sum()
    if model.noise == "normal":
        loss = loss + HAND_PRIOR * (noise ** 2).mean() / model.noise_std ** 2
    gradient, = torch.autograd.grad(loss, noise)
    return loss.detach(), gradient


def randomised(model: Generator, seed: int = 0) -> Generator:
    """`model` with every weight random (a fresh one's digit norms start at zero, which would hide their terms)."""
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=rng) * 0.3)
    return model.eval()


@pytest.mark.parametrize("settings", [dict(), dict(class_norm=False), dict(noise="uniform"), dict(noise_std=1.3)],
                         ids=["digit-norms", "affine-norms", "uniform-noise", "wider-noise"])
@pytest.mark.parametrize("count", [1, 3, 12])
def test_the_written_out_gradient_is_autograds(settings, count):
    model = randomised(Generator(**settings))
    rng = torch.Generator().manual_seed(count)
    noise, labels = sample_noise(model, 1, rng), torch.randint(0, 10, (count,), generator=rng)
    target = torch.rand(count, 1, 28, 28, generator=rng)
    with torch.no_grad():
        loss, gradient = LossAndGradient(model)(noise, labels, target)
    expected_loss, expected_gradient = autograd_loss_and_gradient(model, noise, labels, target)
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-5)
    assert gradient.shape == expected_gradient.shape == (1, model.latent_dim)
    assert torch.allclose(gradient, expected_gradient, rtol=1e-4, atol=1e-6 * expected_gradient.abs().max())


def test_only_the_conditional_conv_generator_is_written_out():
    with pytest.raises(ValueError, match="conditional conv generator"):
        LossAndGradient(Generator(arch="mlp", num_classes=0))
    with pytest.raises(ValueError, match="conditional conv generator"):
        LossAndGradient(Generator(num_classes=0))


@pytest.fixture(scope="module")
def model(handler_client):
    return handler_client.handler.model


def test_the_archives_search_export_gives_pytorchs_loss_and_gradient_for_any_count_of_digits(tiny_store, model):
    with zipfile.ZipFile(tiny_store / "mnist_gan.mar") as archive:
        session = onnxruntime.InferenceSession(archive.read(SEARCH_ONNX_FILE), providers=["CPUExecutionProvider"])
    rng = torch.Generator().manual_seed(5)
    for count in (1, 2, 7, 12):
        noise, labels = sample_noise(model, 1, rng), torch.randint(0, 10, (count,), generator=rng)
        target = torch.rand(count, 1, 28, 28, generator=rng)
        loss, gradient = session.run(None, {"noise": noise.numpy(), "labels": labels.numpy(), "target": target.numpy()})
        expected_loss, expected_gradient = autograd_loss_and_gradient(model, noise, labels, target)
        assert float(loss) == pytest.approx(expected_loss.item(), rel=1e-5)
        assert np.allclose(gradient, expected_gradient.numpy(), rtol=1e-4, atol=1e-7)


def test_the_search_in_onnx_runtime_finds_the_hand_pytorch_finds(tiny_store, model):
    with zipfile.ZipFile(tiny_store / "mnist_gan.mar") as archive:
        session = onnxruntime.InferenceSession(archive.read(SEARCH_ONNX_FILE), providers=["CPUExecutionProvider"])
    hand = sample_noise(model, 1, torch.Generator().manual_seed(8))
    with torch.inference_mode():
        drawn = model(hand.expand(3, -1), torch.tensor([2, 0, 6]))[:, 0]
    in_torch = find_hand(model, drawn, [2, 0, 6])
    in_onnx = find_hand(model, drawn, [2, 0, 6], session=session)
    assert torch.equal(in_onnx, find_hand(model, drawn, [2, 0, 6], session=session))  # bit for bit, again
    assert (in_onnx - in_torch).norm() < 0.05 * hand.norm()  # the same hand, up to the kernels' last bits


def test_a_search_needs_one_digit_per_image(model):
    with pytest.raises(ValueError, match="3 images, but 2 digits"):
        find_hand(model, torch.zeros(3, 28, 28), [1, 2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_the_search_runs_on_the_models_device(model):
    on_gpu = Generator(**{name: getattr(model, name) for name in ("latent_dim", "num_classes", "noise", "noise_std")})
    on_gpu.load_state_dict(model.state_dict())
    on_gpu = on_gpu.cuda().eval()
    hand = sample_noise(model, 1, torch.Generator().manual_seed(9))
    with torch.inference_mode():
        drawn = model(hand, torch.tensor([4]))[0, 0]
    found = find_hand(on_gpu, drawn, 4)  # the upload on the CPU, as the handler has it
    assert found.device.type == "cpu" and (found - find_hand(model, drawn, 4)).norm() < 0.05 * hand.norm()
