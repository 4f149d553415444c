"""All training settings in one dataclass, and the named presets built from it."""
from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "cdcgan"
    # networks (the generator's share of these is recorded in generator.json)
    arch: str = "conv"  # "conv", "mlp" or "mlp-sigmoid" (see handler/generator.py)
    latent_dim: int = 100
    num_classes: int = 10  # 0: unconditional
    width: int = 32  # channels of the conv networks
    noise: str = "normal"  # latent distribution: "normal" (torch.randn) or "uniform" (torch.rand)
    # normal noise's spread when sampling (serving, evaluation, pictures); training draws N(0, I). A little
    # wider draws more of the rarer ways of writing a digit: of the spreads measured, this one has the lowest
    # FID, and wider ones trade FID and requested-digit accuracy for CAS (docs/quality.md)
    noise_std: float = 1.1
    class_norm: bool = True  # conv G: per-digit scale/shift after each GroupNorm, so the digit steers every layer
    projection: bool = False  # conv D: the digit enters as a projection (Miyato & Koyama) instead of an input channel
    # conv D: spectral norm on the real/fake trunk's weights (instead of its BatchNorm) keeps D smooth
    spectral_norm: bool = False
    # optimisation
    # "bce" / "mse" on D's probabilities, "nonsaturating": BCE on D's logits, "hinge": hinge on D's logits
    loss: str = "nonsaturating"
    optimizer: str = "adam"  # "adam" or "sgd"
    # 8x DCGAN's 2e-4: in a 10-minute budget the steps are few, and the served EMA smooths the noise
    # a large rate adds (docs/quality-lr-sweep.md has the sweep's figures)
    lr: float = 1.6e-3
    lr_d: float = 0.0  # D's learning rate when it differs from G's (two time-scale update rule); 0: lr
    # "constant", or "linear": both learning rates fall linearly to 0 over the run, so the last steps
    # refine instead of oscillating around the equilibrium
    lr_schedule: str = "constant"
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 64  # more, smaller steps learn more per minute here than 128 (docs/quality-recipe-steps.md)
    epochs: int = 11  # what fits in 10 minutes on a 2-core CPU (docs/training.md)
    # bfloat16 autocast for the forward passes where the hardware runs it natively (a CUDA GPU, or a CPU
    # with AVX-512 BF16): each step is cheaper, so more epochs fit the budget
    bf16: bool = True
    # "joint": one D step on real+fake, one G step on the same fakes.
    # "tutorial": D on one real image, D on one fake, then G on fresh noise, three optimizer steps.
    step_style: str = "joint"
    # serve an exponential moving average of G; 0 serves G itself. The warm-up (1 + n) / (10 + n) stays
    # below the cap for ~9,000 steps, so in the default run the average spans about its last tenth
    ema_decay: float = 0.999
    aux_classifier: bool = True  # conv: D also classifies the digit, G is trained to match it (AC-GAN)
    # D's digit head also learns the requested labels of fakes (the original AC-GAN); off, it learns from
    # real digits only, so it cannot learn to call an ambiguous fake whatever was requested
    aux_on_fakes: bool = False
    aux_weight: float = 3.0  # weight of G's digit loss: with per-digit norms in G a strong pull costs no realism
    # D's digit head gets its own image-only trunk: fed the label map, it reads the answer off that channel
    label_blind_aux: bool = True
    # DiffAugment (Zhao et al., 2020) on every image D sees, real and fake: "" or a comma list of
    # "translation" and "cutout"; it keeps D from memorising the training set. Off by default: it weakens D's
    # real/fake signal, and beside the digit head G then collapses within each digit (docs/quality-experiments.md)
    diff_augment: str = ""
    # run
    seed: int = 0
    data_dir: str = "data"
    out_dir: str = "artifacts"
    device: str = "auto"  # "auto": CUDA when available, else CPU
    limit: int = 0  # train on the first `limit` images only (0: all 60,000); for smoke tests
    log_every: int = 10  # steps between loss records
    threads: int = 0  # CPU threads; 0: 1 for batch sizes below 16 (tiny ops spin-wait), else all cores

    def generator_kwargs(self) -> dict[str, Any]:
        """The arguments that rebuild the trained generator: `Generator(**kwargs)`."""
        kwargs = dict(arch=self.arch, latent_dim=self.latent_dim, num_classes=self.num_classes, noise=self.noise,
                      noise_std=self.noise_std)
        if self.arch == "conv":
            kwargs["width"] = self.width
            kwargs["class_norm"] = self.class_norm
        return kwargs


# The tutorial ("Make Your First GAN With PyTorch") improves its MNIST GAN one step at a time;
# each step below changes exactly one thing from the one before it.
_TUTORIAL_V1 = dict(
    arch="mlp-sigmoid", num_classes=0, latent_dim=1, noise="uniform", loss="mse", optimizer="sgd",
    lr=0.01, betas=(0.9, 0.999), batch_size=1, epochs=1, step_style="tutorial", ema_decay=0.0,
    aux_classifier=False, bf16=False, noise_std=1.0,
)
# step: (what it changes, in words; the settings it changes)
TUTORIAL_STEPS = {
    "tutorial-v1": ("MLP G(1→200→784) fed one torch.rand number, sigmoid; MSE; SGD 0.01; 1 epoch", {}),
    "tutorial-v2-bce": ("BCE loss instead of MSE", dict(loss="bce")),
    "tutorial-v3-leaky-layernorm": ("LeakyReLU(0.02) + LayerNorm(200) in both; G takes 100 numbers",
                                    dict(arch="mlp", latent_dim=100)),
    "tutorial-v4-adam": ("Adam lr 1e-4 instead of SGD", dict(optimizer="adam", lr=1e-4)),
    "tutorial-v5-randn": ("noise from torch.randn instead of torch.rand", dict(noise="normal")),
    "tutorial": ("the same for 4 epochs (the `tutorial` preset)", dict(epochs=4)),
}


def _build_presets() -> dict[str, dict[str, Any]]:
    presets, settings = {}, dict(_TUTORIAL_V1)
    for name, (_, change) in TUTORIAL_STEPS.items():
        settings = {**settings, **change}
        presets[name] = dict(settings)
    presets["cdcgan"] = {}  # the dataclass defaults
    # The unconditional variant of the default. It samples N(0, I), as it trains: the wider serving spread
    # was chosen on the conditional model's measures (requested digit, CAS), which this one has not got.
    presets["dcgan"] = dict(num_classes=0, aux_classifier=False, noise_std=1.0)
    return presets


PRESETS = _build_presets()
DEFAULT_PRESET = "cdcgan"
ABLATION_STEPS = list(TUTORIAL_STEPS)


SETTING_NAMES = frozenset(f.name for f in fields(TrainConfig))

# Settings added after checkpoints were first written, with the value that continues an older run the way it
# was trained and served: its checkpoint does not mention them.
ADDED_SETTINGS = {"bf16": False, "noise_std": 1.0}


def settings_unknown_here(saved: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """What a saved config (a checkpoint's, or generator.json's) says that this version cannot read:
    the settings since removed that the run had on, with their values (one left off changed nothing),
    and the settings it does not record whose earlier value is not in ADDED_SETTINGS."""
    removed = {key: value for key, value in saved.items() if key not in SETTING_NAMES and value}
    return removed, SETTING_NAMES - set(saved) - set(ADDED_SETTINGS)


def saved_config(saved: dict[str, Any]) -> TrainConfig:
    """The TrainConfig a checkpoint's `config` dict describes, written by this version or an older one.

    Raises ValueError when this version cannot continue that run as it was trained: the checkpoint
    used a setting that has since been removed, or lacks one whose earlier value is not known.
    """
    removed, missing = settings_unknown_here(saved)
    if removed:
        raise ValueError("it was trained with settings this version no longer has: "
                         + ", ".join(f"{key}={value!r}" for key, value in sorted(removed.items())))
    if missing:
        raise ValueError(f"it does not record the settings {', '.join(sorted(missing))}")
    # a removed setting that was left off is dropped here
    settings = {**ADDED_SETTINGS, **{key: value for key, value in saved.items() if key in SETTING_NAMES}}
    return TrainConfig(**{**settings, "betas": tuple(settings["betas"])})


def make_config(preset: str = DEFAULT_PRESET, **overrides: Any) -> TrainConfig:
    """The preset's config with `overrides` applied; None values are ignored."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    unknown = set(overrides) - SETTING_NAMES
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
    settings = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return replace(TrainConfig(), preset=preset, **settings)
