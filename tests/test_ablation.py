"""Every step of the tutorial's story builds what the tutorial describes, and trains."""
import pytest
import torch
from torch import nn

from train.config import ABLATION_STEPS, make_config
from train.data import load_mnist
from train.train import Trainer

EXPECTED = {
    # step: (G hidden layers, latent size, noise, loss, optimizer, lr, epochs)
    "tutorial-v1": ([nn.Sigmoid], 1, "uniform", nn.MSELoss, torch.optim.SGD, 0.01, 1),
    "tutorial-v2-bce": ([nn.Sigmoid], 1, "uniform", nn.BCELoss, torch.optim.SGD, 0.01, 1),
    "tutorial-v3-leaky-layernorm": ([nn.LeakyReLU, nn.LayerNorm], 100, "uniform", nn.BCELoss, torch.optim.SGD, 0.01, 1),
    "tutorial-v4-adam": ([nn.LeakyReLU, nn.LayerNorm], 100, "uniform", nn.BCELoss, torch.optim.Adam, 1e-4, 1),
    "tutorial-v5-randn": ([nn.LeakyReLU, nn.LayerNorm], 100, "normal", nn.BCELoss, torch.optim.Adam, 1e-4, 1),
    "tutorial": ([nn.LeakyReLU, nn.LayerNorm], 100, "normal", nn.BCELoss, torch.optim.Adam, 1e-4, 4),
}


def test_the_steps_are_the_tutorials_sequence():
    assert ABLATION_STEPS == list(EXPECTED)


@pytest.mark.parametrize("step", ABLATION_STEPS)
def test_step_builds_the_described_networks_and_trains(step, data_dir):
    hidden, latent, noise, loss, optimizer, lr, epochs = EXPECTED[step]
    cfg = make_config(step)
    assert (cfg.batch_size, cfg.epochs, cfg.noise) == (1, epochs, noise)
    trainer = Trainer(cfg)
    g, d = trainer.generator, trainer.discriminator
    assert [type(m) for m in g.net] == [nn.Linear, *hidden, nn.Linear, nn.Sigmoid, nn.Unflatten]
    assert (g.net[0].in_features, g.net[0].out_features, g.net[-3].out_features) == (latent, 200, 784)
    assert [type(m) for m in [*d.features, *d.score]] == [nn.Flatten, nn.Linear, *hidden, nn.Linear, nn.Sigmoid]
    if nn.LeakyReLU in hidden:
        assert g.net[1].negative_slope == 0.02 and g.net[2].normalized_shape == (200,)
    assert type(trainer.loss_fn) is loss
    assert type(trainer.opt_g) is optimizer and type(trainer.opt_d) is optimizer
    assert trainer.opt_g.defaults["lr"] == lr
    # the noise distribution: uniform noise stays in [0, 1)
    z, _ = trainer._latent(500)
    assert (z.min() >= 0 and z.max() < 1) if noise == "uniform" else z.min() < 0
    images, _ = load_mnist(data_dir, limit=8)
    before = [p.clone() for p in g.parameters()]
    for image in images.split(1):
        d_loss, g_loss = trainer.train_step(image, None)
        assert torch.isfinite(d_loss) and torch.isfinite(g_loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, g.parameters()))
