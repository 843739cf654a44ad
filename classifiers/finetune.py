"""``finetune``: the backbone's top block and a dense head, fine-tuned on cached maps of the layer below it.

The recipe's third rung (Chollet's "very little data"): first the dense head alone on the
top block's frozen output (computed once), then the top block unfrozen and trained with the
head by SGD at a small learning rate, so the pretrained filters move a little instead of
being wiped out by a random head's large gradients. The top block comes as a saved Keras
model (``top``: maps at the cached layer in, the backbone's output out, the backbone's own
weights), which ``pipeline train`` builds from the cache's recipe and checks against its
weight hash. Without ``top`` the head is the dense head trained in the same two phases.
"""

from __future__ import annotations

from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from classifiers.errors import FeatureShapeError, SettingError
from classifiers.keras_head import JIT_COMPILE, KerasHead, floored, seed_everything, standardisation
from classifiers.sk_compat import Interval, StrOptions
from classifiers.tf_quiet import import_keras

if TYPE_CHECKING:
    import keras

TOP_BATCH = 64  # maps per call when the frozen top block runs once over the training set


class FinetuneHead(KerasHead):
    """Top block -> Normalization -> Flatten -> Dense(units, relu) -> Dropout -> Dense(softmax), in two phases.

    Phase one: ``head_epochs`` of the head on the frozen block's output (``optimizer``,
    ``learning_rate``: RMSprop 2e-4 as the dense head). Phase two: ``epochs`` of block and head
    together by SGD (``finetune_learning_rate`` 1e-4, ``momentum`` 0.9). ``views``: how training
    uses the augmented views ``fit`` gets (``one`` drawn per image and epoch, or ``all``);
    validation never sees them. ``early_stopping``/``reduce_lr`` apply in both phases.
    """

    name = "finetune"
    _parameter_constraints: ClassVar[dict[str, list]] = {
        **KerasHead._parameter_constraints,
        "top": [str, None],
        "units": [Interval(Integral, 1, None, closed="left")],
        "head_epochs": [Interval(Integral, 0, None, closed="left")],
        "epochs": [Interval(Integral, 0, None, closed="left")],
        "finetune_learning_rate": [Interval(Real, 0, None, closed="neither")],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "views": [StrOptions({"one", "all"})],
    }

    def __init__(
        self,
        *,
        top: str | None = None, units: int = 256, dropout: float = 0.5,
        learning_rate: float = 2e-4, optimizer: str = "rmsprop", head_epochs: int = 20,
        finetune_learning_rate: float = 1e-4, momentum: float = 0.9, epochs: int = 10, batch_size: int = 20,
        views: str = "one", early_stopping: int = 0, reduce_lr: int = 0, standardize: bool = True,
        validation_fraction: float = 0.1, class_weight: dict | str | None = None, verbose: int | str = "auto", seed: int = 0,
        jit_compile: bool | str = "auto",
    ) -> None:
        self._store(locals())

    def fit(self, X, y, *, X_val=None, y_val=None, views: np.ndarray | None = None) -> FinetuneHead:
        """Train on maps ``X`` (n, h, w, c) of the top block's input layer; ``views`` (n, k, h, w, c) are
        extra views of the same training images. ``X_val, y_val`` are watched by the callbacks."""
        import_keras()
        self.check_params()
        top = self._load_top()
        X = self._validate_X(X, fitting=True)
        expected = None if top is None else tuple(int(d) for d in top.input_shape[1:])
        if expected is not None and tuple(X.shape[1:]) != expected:
            raise FeatureShapeError(
                f"{self.name}: the top block {self.top} takes maps of shape {expected}, got {tuple(X.shape[1:])}; "
                "train on a cache of the layer the block starts after"
            )
        columns = self._start_fit(y, X.shape[1:])
        if views is not None:
            views = np.asarray(views)
            if views.shape[0] != len(X) or tuple(views.shape[2:]) != tuple(X.shape[1:]):
                raise FeatureShapeError(f"{self.name}: views must be (n, k, {', '.join(map(str, X.shape[1:]))}), got {views.shape}")
        val = None
        if X_val is not None:
            val = (self._validate_X(X_val), self._column(y_val))
        elif self.early_stopping or self.reduce_lr:
            if views is not None:
                raise SettingError(f"{self.name}: with views, early_stopping and reduce_lr need validation rows (X_val, y_val)")
            X, columns, val = self._hold_out(X, columns)
        seed_everything(self.seed)
        frozen = {"X": _through(top, X)}
        if views is not None and views.shape[1]:
            frozen["views"] = np.stack([_through(top, views[:, k]) for k in range(views.shape[1])], axis=1)
        frozen_val = None if val is None else (_through(top, val[0]), val[1])
        head = self._head_model(frozen["X"].shape[1:], len(self.classes_), frozen["X"])
        history: dict[str, list[float]] = {}
        if self.head_epochs:
            optimizers = {"rmsprop": "RMSprop", "adam": "Adam", "sgd": "SGD"}
            optimizer = self._optimizer(optimizers[self.optimizer], learning_rate=self.learning_rate)
            self._fit_phase(head, optimizer, frozen["X"], frozen.get("views"), columns, frozen_val, self.head_epochs,
                            JIT_COMPILE, history, "head")
        model = self._joined(top, head)
        if self.epochs:
            if top is not None:
                top.trainable = True
            optimizer = self._optimizer("SGD", learning_rate=self.finetune_learning_rate, momentum=self.momentum)
            self._fit_phase(model, optimizer, X, views if views is not None and views.shape[1] else None, columns, val,
                            self.epochs, {}, history, "finetune")
        self.model_ = model
        self.history_ = history
        return self

    def fit_stream(self, source, *, val=None) -> FinetuneHead:
        """Fine-tuning passes over every map many times in two phases, so it reads the rows into memory first."""
        X_val = None if val is None else val.read(np.arange(len(val.labels)))
        return self.fit(source.read(np.arange(len(source.labels))), source.labels, X_val=X_val,
                        y_val=None if val is None else val.labels)

    # Building ---------------------------------------------------------------------

    def _load_top(self) -> keras.Model | None:
        """The top block to fine-tune, fresh from its file; None (``top=None``) trains the dense head alone."""
        import keras

        if self.top is None:
            return None
        path = Path(self.top)
        if not path.is_file():
            raise SettingError(f"{self.name}: top={self.top}: no such file; pass the .keras model of the top block")
        return keras.saving.load_model(path, compile=False)

    def _head_model(self, shape: tuple[int, ...], n_classes: int, maps: np.ndarray) -> keras.Model:
        import keras

        inputs = keras.Input(shape=shape, name="top_maps")
        x = inputs
        if self.standardize:
            mean, variance = standardisation(maps)  # of block5's output before fine-tuning moves it: floored
            x = keras.layers.Normalization(axis=-1, mean=mean, variance=floored(variance) if self.top is not None else variance)(x)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(self.units, activation="relu")(x)
        if self.dropout:
            x = keras.layers.Dropout(self.dropout, seed=self.seed)(x)
        outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
        return keras.Model(inputs, outputs, name="dense_head")

    def _joined(self, top: keras.Model, head: keras.Model) -> keras.Model:
        import keras

        inputs = keras.Input(shape=self.input_shape_, name="features")
        return keras.Model(inputs, head(inputs if top is None else top(inputs)), name=f"{self.name}_head")

    @staticmethod
    def _optimizer(kind: str, **settings):
        import keras

        return getattr(keras.optimizers, kind)(**settings)

    def _fit_phase(self, model, optimizer, X, views, columns, val, epochs: int, jit: dict, history: dict, phase: str) -> None:
        """One phase of training, its per-epoch figures appended to ``history`` (``phase`` says which)."""
        import keras

        model.compile(
            optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"],
            jit_compile=self._jit_compile(jit, otherwise=False),
        )
        callbacks = [keras.callbacks.TerminateOnNaN()]
        if self.early_stopping:
            callbacks.append(keras.callbacks.EarlyStopping(patience=self.early_stopping, restore_best_weights=True))
        if self.reduce_lr:
            callbacks.append(keras.callbacks.ReduceLROnPlateau(factor=0.2, patience=self.reduce_lr, min_lr=1e-7))
        if views is not None:
            from classifiers.keras_views import ViewBatches

            x, y, batch_size = ViewBatches(X, views, columns, self.batch_size, self.seed, self.views), None, None
        else:
            x, y, batch_size = X, columns, self.batch_size
        fitted = model.fit(
            x, y, batch_size=batch_size, epochs=epochs, validation_data=val, class_weight=self._column_weights(columns),
            shuffle=True, callbacks=callbacks, verbose=self._keras_verbose(),
        )
        for key, values in fitted.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        history.setdefault("phase", []).extend([phase] * len(next(iter(fitted.history.values()), [])))
        losses = fitted.history.get("loss", [])
        if not np.all(np.isfinite(losses)):
            rate = "finetune_learning_rate" if phase == "finetune" else "learning_rate"
            raise SettingError(
                f"{self.name}: the {phase} phase diverged (loss {losses[-1]:g} at its epoch {len(losses)}); "
                f"lower its learning rate, e.g. --set {rate}={getattr(self, rate) / 10:g}"
            )


def _through(top, maps: np.ndarray) -> np.ndarray:
    """The frozen top block's output over ``maps``, a batch at a time, as float32 (the maps themselves without a block)."""
    if top is None:
        return np.asarray(maps, dtype=np.float32)
    parts = [np.asarray(top.predict_on_batch(np.asarray(maps[i : i + TOP_BATCH], dtype=np.float32)))
             for i in range(0, len(maps), TOP_BATCH)]
    return np.concatenate(parts).astype(np.float32, copy=False)
