"""Training batches that draw among each image's augmented views, as Keras takes them.

Its own module because the class derives from ``keras.utils.PyDataset``: defining it imports
Keras, which only a Keras run with views needs.
"""

from __future__ import annotations

import keras
import numpy as np

VIEW_DRAWS = ("one", "all")


class ViewBatches(keras.utils.PyDataset):
    """Shuffled batches of (maps, columns) where each image is seen as one of its views per epoch.

    ``X`` (n, h, w, c) holds the originals and ``views`` (n, k, h, w, c) the extra views of the
    same images. ``draw="one"``: every epoch, each image appears once, as its original or one of
    its views, chosen at random (seeded); ``draw="all"``: every epoch holds all n * (k + 1) maps.
    """

    def __init__(self, X: np.ndarray, views: np.ndarray, columns: np.ndarray, batch_size: int, seed: int, draw: str) -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        if draw not in VIEW_DRAWS:
            raise ValueError(f"draw must be one of {', '.join(VIEW_DRAWS)}. Received: draw={draw!r}")
        self.X, self.views, self.columns, self.batch_size, self.draw = X, views, columns, batch_size, draw
        self.rng = np.random.default_rng(seed)
        self._new_epoch()

    def _new_epoch(self) -> None:
        n, choices = len(self.columns), self.views.shape[1] + 1
        if self.draw == "one":
            rows, picks = np.arange(n), self.rng.integers(0, choices, size=n)
        else:
            rows, picks = np.repeat(np.arange(n), choices), np.tile(np.arange(choices), n)
        order = self.rng.permutation(len(rows))
        self.rows, self.picks = rows[order], picks[order]

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        rows, picks = self.rows[part], self.picks[part]
        maps = np.array(self.X[rows], dtype=np.float32)
        viewed = picks > 0
        if viewed.any():
            maps[viewed] = self.views[rows[viewed], picks[viewed] - 1]
        return maps, self.columns[rows]

    def on_epoch_end(self) -> None:
        self._new_epoch()
