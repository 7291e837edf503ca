"""gradbook: the gradients the notebooks derive, as one small numpy implementation."""

from gradbook.activations import ACTIVATIONS, sigmoid, softmax
from gradbook.gradcheck import gradcheck, numerical_gradient, relative_error
from gradbook.losses import LOSSES
from gradbook.network import MLP

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "MLP",
    "gradcheck",
    "numerical_gradient",
    "relative_error",
    "sigmoid",
    "softmax",
]
