"""The LightningDataModule that streams a simulated dataset into training."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from .cbed import CBEDDataset, ChunkShuffleSampler, padded_symmetry
from .splits import split_indices


def spread_subset(indices, chunk_patterns: int, max_patterns: int) -> np.ndarray:
    """At most ``max_patterns`` of ``indices``, the same number (evenly spaced) from every zarr chunk they touch."""
    indices = np.sort(np.asarray(indices, dtype=np.int64))
    if len(indices) <= max_patterns:
        return indices
    chunks = indices // int(chunk_patterns)
    groups = np.split(indices, np.flatnonzero(np.diff(chunks)) + 1)
    per = max(1, max_patterns // len(groups))
    picked = [g[np.linspace(0, len(g) - 1, min(per, len(g))).round().astype(int)] for g in groups]
    return np.unique(np.concatenate(picked))[:max_patterns] if picked else indices[:0]


def _worker_init(worker_id: int) -> None:
    """Give each DataLoader worker its own augmentation stream (albumentations ignores global seeds) and one
    thread with augment's allocator settings (see ``stemforge.augment.configure_worker``)."""
    import torch

    info = torch.utils.data.get_worker_info()
    ds = info.dataset
    torch.set_num_threads(1)
    if ds.sample_seed is None:  # PACBED draws: each worker its own stream (a fork copies the parent's)
        ds._rng = np.random.default_rng(int(info.seed) % (2**32))
    if ds.augment is not None:
        from stemforge.augment import configure_worker, reseed

        configure_worker(threads=1)
        reseed(ds.augment, (int(info.seed) + worker_id) % (2**31))


def _layout(config: dict) -> tuple[int, int]:
    """(runs per specimen group, thicknesses per run) of a store from its simulation config."""
    s = config.get("sampling", {})
    return int(s.get("optics_per_specimen", 1) or 1), len(s.get("thicknesses_nm") or [1])


class CBEDDataModule(pl.LightningDataModule):
    """Train / val / test loaders over a dataset written by ``scripts/simulate.py``.

    Parameters
    ----------
    path : str
        The zarr dataset.
    batch_size, num_workers : int
    split : dict
        Keyword arguments of :func:`stemforge.datamodules.splits.split_indices` (``method``, fractions, holdouts, seed).
    augment : albumentations.Compose or None
        Training-time augmentation (``stemforge/conf/augment``); applied to validation too when ``augment_val``.
    augment_val : bool
        Augment validation/test data, each pattern with its own fixed seed (the same noise on every pass), to
        measure on realistic detector data.
    normalisation : dict
        ``{"mode": "probe_max" | "none", "power": float}`` — recorded in the model card.
    max_peaks : int
    seed : int
        Shuffling seed.
    max_val_patterns : int, optional
        Validate (and test) on at most this many patterns, spread evenly over every zarr chunk of the split
        (each chunk decoded once per pass), rather than the first ones of a few chunks.
    mix_chunks : int
        Training batches mix the patterns of this many zarr chunks (see :class:`ChunkShuffleSampler`); use it when
        a chunk holds one structure or orientation (the corpus) and the task classifies or regresses per
        structure.
    average : int
        PACBED: average up to this many patterns of one specimen group and thickness per sample (training draws
        1..``average``, validation and test use ``average``); see :class:`~stemforge.datamodules.cbed.CBEDDataset`.
    """

    def __init__(
        self,
        path: str,
        batch_size: int = 8,
        num_workers: int = 0,
        split: dict | None = None,
        augment=None,
        augment_val: bool = False,
        normalisation: dict | None = None,
        max_peaks: int = 128,
        seed: int = 0,
        pin_memory: bool = False,
        max_val_patterns: int | None = None,
        average: int = 1,
        mix_chunks: int = 1,
    ):
        super().__init__()
        self.path = str(path)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.split = dict(split or {"method": "random"})
        self.augment = augment
        self.augment_val = augment_val
        self.normalisation = dict(normalisation or {"mode": "probe_max", "power": 1.0})
        self.max_peaks = max_peaks
        self.seed = seed
        self.pin_memory = pin_memory
        self.max_val_patterns = None if max_val_patterns is None else int(max_val_patterns)
        self.average = int(average)
        self.mix_chunks = max(1, int(mix_chunks))
        self.info: dict = {}
        self._sets: dict = {}

    def prepare_data(self) -> None:
        from stemforge.sim.dataset import open_dataset

        open_dataset(self.path)  # clear error when the path is not a dataset

    def setup(self, stage: str | None = None) -> None:
        if self._sets:
            return
        from stemforge.sim.dataset import dataset_attrs, open_dataset
        from stemforge.sim.orientations import proper_point_group
        from stemforge.sim.structures import load_structure

        group, valid = open_dataset(self.path)
        attrs = dataset_attrs(group)  # today's names, also for datasets written before 0.2.0
        names = [s["name"] for s in attrs["structures"]]
        structures = [load_structure(n) for n in names]
        symmetry = np.stack([padded_symmetry(proper_point_group(s)) for s in structures])
        lab = group["labels"]
        needed = {"run_index", "structure_id", "thickness_A"}
        if self.split.get("method") == "orientation":
            needed |= {"rotation"}
        labels = {k: lab[k][:] for k in needed}
        train, val, test = split_indices(labels, valid, structure_names=names, structures=structures, **self.split)
        if self.max_val_patterns is not None:
            chunk = int(attrs["chunk_patterns"])
            val, test = (spread_subset(v, chunk, self.max_val_patterns) for v in (val, test))
        calib = attrs["calibration"]
        self.info = {
            "structures": names,
            "num_phases": len(names),
            "shape": list(calib["shape"]),
            "pixel_size_inv_A": calib["pixel_size_inv_A"],
            "calibration": calib,
            "normalisation": self.normalisation,
            "split": {**self.split, "sizes": [len(train), len(val), len(test)]},
            "chunk_patterns": int(attrs["chunk_patterns"]),
            "dataset_config": attrs["config"],
            "versions": attrs["versions"],
            "average": self.average,
        }
        aug_eval = self.augment if self.augment_val else None
        kw = dict(
            symmetry=symmetry,
            normalisation=self.normalisation,
            max_peaks=self.max_peaks,
            pixel_size_inv_A=calib["pixel_size_inv_A"],
            average=self.average,
            layout=_layout(attrs["config"]) if self.average > 1 else None,
        )
        if aug_eval is not None:  # a copy: the training workers re-seed theirs
            import copy

            aug_eval = copy.deepcopy(aug_eval)
        self._sets = {
            "train": CBEDDataset(self.path, train, augment=self.augment, cache_chunks=self.mix_chunks, **kw),
            "val": CBEDDataset(self.path, val, augment=aug_eval, sample_seed=self.seed, **kw),
            "test": CBEDDataset(self.path, test, augment=aug_eval, sample_seed=self.seed + 1, **kw),
        }

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        # training drops a last batch of one sample: BatchNorm cannot normalise a single sample
        ds = self._sets[name]
        mix = self.mix_chunks if name == "train" else 1
        sampler = ChunkShuffleSampler(
            ds.indices, self.info["chunk_patterns"], self.seed, shuffle=shuffle, mix_chunks=mix
        )
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            worker_init_fn=_worker_init if self.num_workers > 0 else None,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            drop_last=shuffle and len(ds) % self.batch_size == 1,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
