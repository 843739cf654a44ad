"""Pooled, centred, unit-length embeddings of a cache's images: what similarity is measured on.

Post-ReLU codes are all positive, so raw cosines of any two images are high, and a few
channels with large activations decide them. Each channel is standardised over the data set
first (mean 0, variance 1; constant channels left at 0), which measured the widest gap
between copies and distinct photos (README, "Dataset health"). Codes are read and pooled
block by block, so memory is (n, c) floats whatever the grid size.
"""

from __future__ import annotations

import numpy as np

from features_cache.reader import FeatureCache

READ_ROWS = 1024


def pooled(cache: FeatureCache) -> np.ndarray:
    """(n, c) float32 average over each feature map's grid."""
    blocks = [block.mean(axis=(1, 2)) for block in cache.iter_features(batch_size=READ_ROWS)]
    return np.concatenate(blocks).astype(np.float32) if blocks else np.zeros((0, cache.feature_shape[-1]), np.float32)


def unit_rows(X: np.ndarray) -> np.ndarray:
    """Per-channel standardised, then L2-normalised rows; an all-zero row stays zero."""
    std = X.std(axis=0, keepdims=True)
    scaled = np.divide(X - X.mean(axis=0, keepdims=True), std, out=np.zeros_like(X), where=std > 1e-12)
    norms = np.linalg.norm(scaled, axis=1, keepdims=True)
    return np.divide(scaled, norms, out=np.zeros_like(scaled), where=norms > 0).astype(np.float32)
