"""Data stage: Lightning data modules that stream simulated, augmented patterns into training."""

from .cbed import CBEDDataset, ChunkShuffleSampler, normalise
from .datamodule import CBEDDataModule
from .splits import split_indices

__all__ = ["CBEDDataModule", "CBEDDataset", "ChunkShuffleSampler", "normalise", "split_indices"]
