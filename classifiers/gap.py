"""``gap``: GlobalAveragePooling2D -> Dense softmax; a few thousand weights, trains in seconds."""

from __future__ import annotations

from numbers import Real
from typing import ClassVar

import keras
from sklearn.utils._param_validation import Interval

from classifiers.keras_head import KerasHead


class GapHead(KerasHead):
    """GlobalAveragePooling2D -> (Dropout) -> Dense(softmax), Adam(1e-3), batch 32, 30 epochs.

    ``early_stopping``/``reduce_lr``: patience in epochs on validation loss (0 = off);
    ``standardize``: per-channel standardisation of the features, fitted on the training rows;
    ``validation_fraction``: rows held out for those callbacks when ``fit`` gets no validation data.
    """

    name = "gap"
    _parameter_constraints: ClassVar[dict[str, list]] = {
        **KerasHead._parameter_constraints,
        "dropout": [Interval(Real, 0, 1, closed="left")],
    }

    def __init__(
        self,
        *,
        dropout: float = 0.0,
        learning_rate: float = 1e-3,
        optimizer: str = "adam",
        batch_size: int = 32,
        epochs: int = 30,
        early_stopping: int = 0,
        reduce_lr: int = 0,
        standardize: bool = True,
        validation_fraction: float = 0.1,
        class_weight: dict | str | None = None,
        verbose: int | str = "auto",
        seed: int = 0,
    ) -> None:
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.optimizer = optimizer
        self.batch_size = batch_size
        self.epochs = epochs
        self.early_stopping = early_stopping
        self.reduce_lr = reduce_lr
        self.standardize = standardize
        self.validation_fraction = validation_fraction
        self.class_weight = class_weight
        self.verbose = verbose
        self.seed = seed

    def body(self, x, n_classes: int):
        x = keras.layers.GlobalAveragePooling2D()(x)
        if self.dropout:
            x = keras.layers.Dropout(self.dropout, seed=self.seed)(x)
        return keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
