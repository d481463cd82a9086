"""mlpkit: train multilayer perceptrons on tabular data from one YAML file."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlpkit.errors import MlpkitError

if TYPE_CHECKING:
    from mlpkit.config.load import load_config
    from mlpkit.config.schema import Config

__version__ = "0.1.0"
__all__ = ["Config", "MlpkitError", "__version__", "load_config"]

# Imported on first use, so `mlpkit --help` and `import mlpkit.errors` skip pydantic and YAML.
_LAZY = {"Config": "mlpkit.config.schema", "load_config": "mlpkit.config.load"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mlpkit' has no attribute {name!r}")
