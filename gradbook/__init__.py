"""gradbook: the gradients the notebooks derive, as one small numpy implementation."""

from importlib.metadata import PackageNotFoundError, version

from gradbook.activations import ACTIVATIONS, sigmoid, softmax
from gradbook.gradcheck import (
    derivation,
    gradcheck,
    numerical_gradient,
    relative_error,
    shape_errors_fail,
)
from gradbook.losses import LOSSES
from gradbook.network import MLP

try:
    __version__ = version("gradbook")
except PackageNotFoundError:  # run from a folder that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "MLP",
    "derivation",
    "gradcheck",
    "numerical_gradient",
    "relative_error",
    "shape_errors_fail",
    "sigmoid",
    "softmax",
]
