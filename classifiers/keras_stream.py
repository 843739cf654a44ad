"""Training rows read from disk batch by batch, as Keras takes them (``fit_stream``).

Its own module because the class derives from ``keras.utils.PyDataset``: defining it imports
Keras, which only a streamed Keras run needs.
"""

from __future__ import annotations

import keras
import numpy as np

from classifiers.base import RowSource


class StreamBatches(keras.utils.PyDataset):
    """Batches read from a :class:`RowSource`, in a fresh seeded order each epoch when shuffling."""

    def __init__(self, source: RowSource, columns: np.ndarray, batch_size: int, seed: int, shuffle: bool) -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        self.source, self.columns, self.batch_size, self.shuffle = source, columns, batch_size, shuffle
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(columns)) if shuffle else np.arange(len(columns))

    def __len__(self) -> int:
        return -(-len(self.columns) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        return self.source.read(rows), self.columns[rows]

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.order = self.rng.permutation(len(self.columns))
