"""The networks: shapes, ranges, conditioning, and that both sides of the GAN build as configured."""
import pytest
import torch
from torch import nn

from handler.generator import Generator, sample_latent
from train.discriminator import Discriminator


@pytest.mark.parametrize("kwargs", [
    dict(),  # the served default: conditional DCGAN
    dict(num_classes=0),
    dict(arch="mlp", num_classes=0),
    dict(arch="mlp-sigmoid", num_classes=0, latent_dim=1, noise="uniform"),
])
def test_generator_outputs_images_in_unit_range(kwargs):
    torch.manual_seed(0)
    model = Generator(**kwargs).eval()
    rng = torch.Generator().manual_seed(0)
    noise, labels = sample_latent(model, 5, rng)
    images = model(noise, labels)
    assert images.shape == (5, 1, 28, 28)
    assert images.min() >= 0 and images.max() <= 1
    scores = Discriminator(model.arch, model.num_classes)(images, labels)
    assert scores.shape == (5, 1)


def test_default_generator_builds_with_no_arguments_as_torchserve_does():
    model = Generator()
    assert model.arch == "conv" and model.num_classes == 10 and model.latent_dim == 100


def test_sample_latent_is_reproducible_and_honours_the_digit():
    model = Generator()
    a = sample_latent(model, 4, torch.Generator().manual_seed(3))
    b = sample_latent(model, 4, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    _, labels = sample_latent(model, 6, torch.Generator().manual_seed(3), digit=7)
    assert labels.tolist() == [7] * 6
    uniform = Generator(arch="mlp", num_classes=0, noise="uniform")
    noise, labels = sample_latent(uniform, 100, torch.Generator().manual_seed(0))
    assert labels is None and noise.min() >= 0 and noise.max() < 1


def test_sample_latent_draws_normal_noise_with_the_models_spread_unless_told_otherwise():
    wide = Generator(noise_std=1.5)
    noise, labels = sample_latent(wide, 4, torch.Generator().manual_seed(3))
    standard = torch.randn(4, 100, generator=torch.Generator().manual_seed(3))
    assert torch.equal(noise, 1.5 * standard)  # the same draw, widened: a seed means the same thing at any spread
    assert torch.equal(labels, sample_latent(Generator(), 4, torch.Generator().manual_seed(3))[1])
    # training's draws (noise_std=1.0) ignore the model's serving spread
    assert torch.equal(sample_latent(wide, 4, torch.Generator().manual_seed(3), noise_std=1.0)[0], standard)
    assert sample_latent(wide, 20_000, torch.Generator().manual_seed(0))[0].std().item() == pytest.approx(1.5, abs=0.01)


def test_conditional_generator_requires_labels_and_unconditional_refuses_digits():
    with pytest.raises(ValueError, match="conditional"):
        Generator()(torch.randn(2, 100))
    with pytest.raises(ValueError, match="unconditional"):
        sample_latent(Generator(arch="mlp", num_classes=0), 1, torch.Generator(), digit=3)


def test_eval_mode_is_the_real_nn_module_eval():
    # The tutorial overrode Module.train(); TorchServe calls .eval(), which must still reach every submodule.
    model = Generator()
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="arch"):
        Generator(arch="transformer")
    with pytest.raises(ValueError, match="noise"):
        Generator(noise="cauchy")
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="noise_std"):
            Generator(noise_std=bad)
    with pytest.raises(ValueError, match="noise_std"):
        Generator(arch="mlp", num_classes=0, noise="uniform", noise_std=1.2)


@pytest.mark.parametrize("training", [True, False])
def test_a_sample_does_not_depend_on_the_rest_of_its_batch(training):
    # No BatchNorm in G: with it, eval mode's running averages cut sample diversity to a third.
    torch.manual_seed(0)
    model = Generator().train(training)
    noise, labels = sample_latent(model, 16, torch.Generator().manual_seed(1))
    with torch.no_grad():
        together = model(noise, labels)
        alone = torch.cat([model(noise[i:i + 1], labels[i:i + 1]) for i in range(16)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_class_norm_gives_every_digit_its_own_scale_and_shift():
    torch.manual_seed(0)
    model = Generator(class_norm=True).eval()
    assert len(model.class_norms) == 2
    assert not any(m.affine for m in model.net if isinstance(m, nn.GroupNorm))  # the per-digit ones replace them
    noise = torch.randn(2, 100)
    threes, fives = torch.tensor([3, 3]), torch.tensor([5, 5])
    with torch.no_grad():
        before_three, before_five = model(noise, threes), model(noise, fives)
        model.class_norms[0].weight[5] += 1.0  # a different scale and shift for digit 5 only
        assert torch.equal(model(noise, threes), before_three)
        assert not torch.allclose(model(noise, fives), before_five)


def test_without_class_norm_the_generator_is_the_plain_one():
    model = Generator(class_norm=False)
    assert model.class_norms is None
    assert all(m.affine for m in model.net if isinstance(m, nn.GroupNorm))


@pytest.mark.parametrize("settings", [dict(), dict(projection=True, spectral_norm=True), dict(label_blind_aux=True)])
def test_discriminator_scores_depend_on_the_digit(settings):
    torch.manual_seed(0)
    D = Discriminator(num_classes=10, aux_classifier=True, **settings).eval()
    images = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        a, b = D(images, torch.tensor([1, 2, 3, 4])), D(images, torch.tensor([5, 6, 7, 8]))
    assert a.shape == (4, 11)
    assert not torch.allclose(a[:, 0], b[:, 0])  # the real/fake score sees the label
    if settings:  # the digit head is not told the answer (fed the label map as an input channel, it is)
        assert torch.allclose(a[:, 1:], b[:, 1:])
    else:
        assert not torch.allclose(a[:, 1:], b[:, 1:])
