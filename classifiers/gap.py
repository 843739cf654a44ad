"""``gap``: GlobalAveragePooling2D -> Dense softmax; a few thousand weights, trains in seconds."""

from __future__ import annotations

from classifiers.keras_head import KerasHead


class GapHead(KerasHead):
    """GlobalAveragePooling2D -> (Dropout) -> Dense(softmax), Adam(1e-3), batch 32, 30 epochs.

    ``early_stopping``/``reduce_lr``: patience in epochs on validation loss (0 = off);
    ``standardize``: per-channel standardisation of the features, fitted on the training rows;
    ``validation_fraction``: rows held out for those callbacks when ``fit`` gets no validation data.
    """

    name = "gap"

    def __init__(
        self,
        *,
        dropout: float = 0.0,
        learning_rate: float = 1e-3, optimizer: str = "adam", batch_size: int = 32, epochs: int = 30,
        early_stopping: int = 0, reduce_lr: int = 0, standardize: bool = True, validation_fraction: float = 0.1,
        class_weight: dict | str | None = None, verbose: int | str = "auto", seed: int = 0, jit_compile: bool | str = "auto",
    ) -> None:
        self._store(locals())

    def body(self, x):
        import keras

        return keras.layers.GlobalAveragePooling2D()(x)
