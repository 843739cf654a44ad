"""``dense``: the classic bottleneck-features recipe, Flatten -> Dense(256) -> Dropout -> softmax."""

from __future__ import annotations

from numbers import Integral
from typing import ClassVar

from classifiers.keras_head import KerasHead
from classifiers.sk_compat import Interval


class DenseHead(KerasHead):
    """Flatten -> Dense(units, relu) -> Dropout -> Dense(softmax), RMSprop(2e-4), batch 20, 20 epochs.

    ``early_stopping``/``reduce_lr``: patience in epochs on validation loss (0 = off);
    ``standardize``: per-channel standardisation of the features, fitted on the training rows;
    ``validation_fraction``: rows held out for those callbacks when ``fit`` gets no validation data.
    """

    name = "dense"
    _parameter_constraints: ClassVar[dict[str, list]] = {
        **KerasHead._parameter_constraints,
        "units": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(
        self,
        *,
        units: int = 256, dropout: float = 0.5,
        learning_rate: float = 2e-4, optimizer: str = "rmsprop", batch_size: int = 20, epochs: int = 20,
        early_stopping: int = 0, reduce_lr: int = 0, standardize: bool = True, validation_fraction: float = 0.1,
        class_weight: dict | str | None = None, verbose: int | str = "auto", seed: int = 0, jit_compile: bool | str = "auto",
    ) -> None:
        self._store(locals())

    def body(self, x):
        import keras

        x = keras.layers.Flatten()(x)
        return keras.layers.Dense(self.units, activation="relu")(x)
