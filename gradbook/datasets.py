"""Data sets by name, a plain registry so notebooks, the service and tests agree on them.

* ``xor``: the derivations' toy inputs (third column always 1, standing in for a bias) with the
  XOR of the first two columns as target: not linearly separable, so it needs the hidden layer.
* ``digits``: scikit-learn's bundled 8×8 handwritten digits (1797 images, no download), pixels
  scaled to [0, 1], labels 0-9, split 80/20 stratified with a fixed seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gradbook.validation import brief


@dataclass(frozen=True)
class Dataset:
    """Training and held-out arrays; ``Y`` is ``(n, d_out)`` targets or ``(n,)`` class labels."""

    X_train: np.ndarray
    Y_train: np.ndarray
    X_test: np.ndarray
    Y_test: np.ndarray


def xor(seed: int = 0) -> Dataset:
    X = np.array([[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=np.float64)
    Y = np.array([[0], [1], [1], [0]], dtype=np.float64)
    return Dataset(X, Y, X, Y)


def digits(seed: int = 0) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    X = bunch.data.astype(np.float64) / 16.0
    X_train, X_test, y_train, y_test = train_test_split(
        X, bunch.target, test_size=0.2, random_state=seed, stratify=bunch.target
    )
    return Dataset(X_train, y_train, X_test, y_test)


DATASETS: dict[str, Callable[[int], Dataset]] = {"xor": xor, "digits": digits}


def load(name: str, seed: int = 0) -> Dataset:
    """The data set registered as ``name``; ``ValueError`` lists the known names otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {brief(name)}; known: {sorted(DATASETS)}")
    return DATASETS[name](seed)
