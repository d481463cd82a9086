"""mlpkit: train multilayer perceptrons on tabular data from one YAML file."""

from mlpkit.config import load_config
from mlpkit.errors import MlpkitError
from mlpkit.schema import Config

__version__ = "0.1.0"
__all__ = ["Config", "MlpkitError", "__version__", "load_config"]
