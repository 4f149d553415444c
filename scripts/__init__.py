"""The core path's tools: archive (make archive), server (make serve/stop), predict (make predict),
kserve_bundle (make kserve-bundle)."""
from pathlib import Path

MODEL_NAME = "mnist_gan"  # the archive's name, and so the URL: POST /predictions/mnist_gan
ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config.properties"  # the server's addresses and limits; every tool reads them from here
HANDLER_DIR = ROOT / "handler"  # what TorchServe runs: the model file, the handler, its request contract
MODEL_CONFIG = HANDLER_DIR / "model-config.yaml"  # packed into the .mar: workers, batching, the handler's runtime


def read_model_config() -> dict:
    """The shipped handler/model-config.yaml (its worker count is the one every tool and test uses)."""
    import yaml  # only the tools that read it need pyyaml

    return yaml.safe_load(MODEL_CONFIG.read_text())


def hand_route() -> str:
    """The name the archive is registered under a second time, to find hands (POST /predictions/<it>): model-config.yaml
    names it, and config.properties registers it."""
    return read_model_config()["handler"]["hand_route"]


def read_properties(path: Path = CONFIG) -> dict[str, str]:
    """A config.properties file as TorchServe (java.util.Properties) and KServe's wrapper read it."""
    return parse_properties(path.read_text(), str(path))


def parse_properties(text: str, source: str = "config.properties") -> dict[str, str]:
    """key=value lines in order, without comments ("#" or "!") and blank lines."""
    props = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")):
            key, sep, value = line.partition("=")
            if not sep:
                raise ValueError(f"{source}: not a key=value line: {line!r}")
            props[key.strip()] = value.strip()
    return props
