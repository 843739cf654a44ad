"""The HDF5 feature cache: the contract between extraction and the heads."""

from features_cache.errors import CacheError
from features_cache.reader import FeatureCache
from features_cache.schema import Recipe

__all__ = ["CacheError", "FeatureCache", "Recipe"]
