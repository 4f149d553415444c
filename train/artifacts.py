"""The trained generator's files: saving results (atomically, through train.files) and loading a run back."""
import json
from pathlib import Path
from typing import Any, Optional

import torch

from train.files import atomic_path


def save_torch(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_figure(figure: Any, path: str | Path) -> None:
    """Saves a matplotlib figure as PNG atomically and closes it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(figure)


def image_grid(images: torch.Tensor, nrow: int, path: str | Path, title: Optional[str] = None) -> None:
    """Writes N x 1 x 28 x 28 images in [0, 1] as a PNG grid (white digits on black, like MNIST)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, pad_value=0.5)[0]
    scale = 0.45
    figure = plt.figure(figsize=(grid.shape[1] / 30 * scale * 2, grid.shape[0] / 30 * scale * 2 + (0.4 if title else 0)))
    axes = figure.add_axes((0, 0, 1, 1))
    axes.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes.set_axis_off()
    if title:
        axes.set_title(title, fontsize=9)
    save_figure(figure, path)


def load_generator(weights: str | Path, metadata: str | Path) -> tuple[torch.nn.Module, dict]:
    """The trained generator (eval mode, CPU) and its metadata; ValueError says what is wrong."""
    from handler.generator import Generator

    metadata = Path(metadata)
    try:
        meta = json.loads(metadata.read_text())
        model = Generator(**meta["model"])
    except FileNotFoundError:
        raise ValueError(f"{metadata} does not exist: run `make train` first") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{metadata} is not valid generator metadata ({error!r})") from None
    load_generator_state(weights, model)
    return model.eval(), meta


def load_run(run_dir: str | Path) -> tuple[torch.nn.Module, dict]:
    """The trained generator of a run directory (its generator.pt and generator.json) and its metadata."""
    return load_generator(Path(run_dir) / "generator.pt", Path(run_dir) / "generator.json")


def load_generator_state(path: str | Path, model: torch.nn.Module) -> None:
    """Loads a plain state dict into `model`, with a message that says what is wrong if it can't."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist: run `make train` first") from None
    except Exception as error:
        raise ValueError(f"{path} is not a readable PyTorch state dict ({error})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a plain state dict (a dict of tensors): save model.state_dict()")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{path} does not fit the generator described by its metadata: {error}") from None
