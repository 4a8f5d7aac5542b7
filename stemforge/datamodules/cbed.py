"""Lazy, worker-safe access to a simulated CBED dataset, with on-the-fly augmentation and normalisation.

A sample is a dict of tensors (the batch contract of ``networks``): ``pattern`` and ``probe`` (1,H,W),
``vg_map`` and ``disk_map`` (1,H,W), ``peaks`` (R,2) the Bragg positions present in the dynamical pattern at the
dataset's reference dose (``labels/reflections_present``, :func:`stemforge.sim.labels.present`; datasets written
before it have only the kinematic flag ``reflections_visible``, used then), or at the dose the augmentation's
shot noise drew for this sample when the dataset stores ``reflections_intensity``/``_background``
(x=col, y=row; NaN padded), ``dose_e`` (that dose, NaN when the sample carries no shot noise),
``thickness_nm``, ``phase`` (class index), ``rotation`` (3,3) and ``symmetry`` (24,3,3: the crystal's proper
point group padded with identities), plus ``index`` (the pattern's index in the store).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

MAX_SYMMETRY = 24

#: How patterns and probes are scaled before the network; recorded in model cards.
NORMALISATIONS = ("probe_max", "none")


def normalise(pattern: np.ndarray, probe: np.ndarray, mode: str = "probe_max", power: float = 1.0):
    """Scale a (pattern, probe) pair: ``probe_max`` divides both by the probe's maximum (crystal4D's choice, so
    the direct beam of a thin crystal is ~1), then raises both to ``power`` (e.g. 0.5 to compress the range)."""
    if mode not in NORMALISATIONS:
        raise ValueError(f"normalisation mode must be one of {NORMALISATIONS}, got {mode!r}")
    if mode == "probe_max":
        peak = float(np.max(probe))
        if not peak > 0:
            raise ValueError("probe image has no positive pixel; cannot normalise by its maximum")
        pattern, probe = pattern / peak, probe / peak
    if power != 1.0:
        pattern = np.clip(pattern, 0, None) ** power
        probe = np.clip(probe, 0, None) ** power
    return pattern.astype(np.float32), probe.astype(np.float32)


def padded_symmetry(ops: np.ndarray) -> np.ndarray:
    """(K,3,3) proper rotations → (24,3,3) padded with identities."""
    out = np.tile(np.eye(3, dtype=np.float32), (MAX_SYMMETRY, 1, 1))
    out[: len(ops)] = ops
    return out


class CBEDDataset(Dataset):
    """Patterns ``indices`` of the zarr dataset at ``path``.

    The zarr group is opened lazily in each process (after a DataLoader fork) and chunks are read on demand;
    the last decoded chunk of every array is kept, so a chunk-ordered sampler (:class:`ChunkShuffleSampler`)
    decodes each chunk once per epoch. Nothing else of the dataset is held in memory.

    Parameters
    ----------
    path : str
    indices : array of int
        Pattern indices (from :func:`stemforge.datamodules.splits.split_indices`).
    symmetry : ndarray
        (num_structures, 24, 3, 3) padded proper point groups by structure id.
    augment : albumentations.Compose or None
        A pipeline from ``stemforge.augment.build_pipeline`` (geometry moves maps and peaks with the pattern).
    normalisation : dict
        ``{"mode": "probe_max" | "none", "power": float}``.
    max_peaks : int
        Rows of the padded ``peaks`` tensor.
    pixel_size_inv_A : float, optional
        Å⁻¹ per px for augmentations given in Å⁻¹.
    sample_seed : int, optional
        Re-seed the augmentation from (``sample_seed``, pattern index) before every sample, so that a pattern gets
        the same noise and artefacts on every pass (validation and test sets); None: one running stream.
    average : int
        Position-averaged CBED (PACBED, as for thickness): each sample is the mean of up to ``average`` patterns of
        the same specimen group at the same thickness (different probe positions and defoci), their probes
        averaged alike, before augmentation; labels are the first pattern's. With ``sample_seed`` exactly
        ``average`` patterns are used (the same ones every pass); otherwise a number drawn from 1..``average``
        each time, so the model sees single CBED and PACBED alike. 1: plain CBED.
    cache_chunks : int
        Decoded chunks kept per array (least recently used dropped): as many as a
        :class:`ChunkShuffleSampler` mixes (``mix_chunks``).
    layout : (int, int), optional
        ``(runs_per_group, thicknesses_per_run)`` of the store (``sampling.optics_per_specimen`` and
        ``len(sampling.thicknesses_nm)``; pattern ``i`` is thickness ``i % T`` of run ``i // T``); needed when
        ``average > 1``.
    """

    SCALARS = ("thickness_A", "structure_id", "num_reflections")

    def __init__(
        self,
        path,
        indices,
        symmetry,
        augment=None,
        normalisation=None,
        max_peaks: int = 128,
        pixel_size_inv_A: float | None = None,
        sample_seed: int | None = None,
        average: int = 1,
        layout: tuple[int, int] | None = None,
        cache_chunks: int = 1,
    ):
        self.cache_chunks = max(1, int(cache_chunks))
        self.average = int(average)
        if self.average < 1:
            raise ValueError(f"average must be >= 1, got {average}")
        if self.average > 1 and layout is None:
            raise ValueError("averaging patterns (PACBED) needs the store's layout (runs per group, thicknesses)")
        self.layout = None if layout is None else (int(layout[0]), int(layout[1]))
        self._members = set(np.asarray(indices, dtype=np.int64).tolist()) if self.average > 1 else set()
        self._rng = np.random.default_rng(sample_seed)
        self.path = str(path)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.symmetry = np.asarray(symmetry, dtype=np.float32)
        self.augment = augment
        self.normalisation = dict(normalisation or {"mode": "probe_max", "power": 1.0})
        self.max_peaks = int(max_peaks)
        self.pixel_size_inv_A = pixel_size_inv_A
        self.sample_seed = None if sample_seed is None else int(sample_seed)
        self._group = None
        self._pid = None
        self._cache: dict = {}

    def __len__(self) -> int:
        return len(self.indices)

    def _open(self):
        if self._group is None or self._pid != os.getpid():
            import zarr

            self._group = zarr.open_group(self.path, mode="r")
            self._pid = os.getpid()
            self._cache = {}
            # the peaks: present reflections, or the kinematic flag in datasets written before it existed
            present = "reflections_present" in self._group["labels"]
            self._truth = "labels/reflections_present" if present else "labels/reflections_visible"
            self._per_dose = {"reflections_intensity", "reflections_background"} <= set(self._group["labels"])
        return self._group

    def _read(self, name: str, i: int):
        """Row ``i`` of array ``name``, decoding (and caching) its whole chunk."""
        arr = self._open()[name]
        c = arr.chunks[0]
        start = (i // c) * c
        held = self._cache.setdefault(name, {})
        block = held.pop(start, None)  # re-inserted last: dicts keep insertion order, the first is the oldest
        if block is None:
            block = arr[start : min(start + c, arr.shape[0])]
            while len(held) >= self.cache_chunks:
                held.pop(next(iter(held)))
        held[start] = block
        return block[i - start]

    def partners(self, i: int) -> list[int]:
        """Pattern ``i`` and the other patterns of this split from its specimen group at its thickness."""
        if self.layout is None:
            return [int(i)]
        G, T = self.layout
        run, t = divmod(int(i), T)
        base = (run // G) * G
        others = [r * T + t for r in range(base, base + G) if r != run and r * T + t in self._members]
        return [int(i), *others]

    def _averaged(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(pattern, probe) of ``i``, or their PACBED mean over partners (see ``average``)."""
        if self.average == 1:
            return (
                np.asarray(self._read("patterns", i), dtype=np.float32),
                np.asarray(self._read("probes", i), dtype=np.float32),
            )
        rng = np.random.default_rng([self.sample_seed, i]) if self.sample_seed is not None else self._rng
        cand = self.partners(i)
        n = min(len(cand), self.average if self.sample_seed is not None else int(rng.integers(1, self.average + 1)))
        pick = [cand[0], *rng.permutation(cand[1:])[: n - 1].tolist()]
        pattern = np.mean([np.asarray(self._read("patterns", j), dtype=np.float32) for j in pick], axis=0)
        probe = np.mean([np.asarray(self._read("probes", j), dtype=np.float32) for j in pick], axis=0)
        return pattern.astype(np.float32), probe.astype(np.float32)

    def __getitem__(self, k: int) -> dict:
        i = int(self.indices[k])
        pattern, probe = self._averaged(i)
        maps = {key: np.asarray(self._read(f"labels/{key}", i), dtype=np.float32) for key in ("vg_map", "disk_map")}
        refl = np.asarray(self._read("labels/reflections_px", i), dtype=np.float32)
        visible = np.asarray(self._read(self._truth, i), dtype=bool)
        n = int(self._read("labels/num_reflections", i))
        dose = None
        if self.augment is not None:
            from stemforge.augment import augment_sample

            if self.sample_seed is not None:  # the same artefacts for this pattern on every pass (validation)
                from stemforge.augment import reseed

                reseed(self.augment, (self.sample_seed * 1_000_003 + i) % (2**31))
            out = augment_sample(self.augment, pattern, probe, maps, refl[:n], n, self.pixel_size_inv_A)
            pattern, probe, maps = out["pattern"], out["probe"], out["labels"]
            refl = np.concatenate([out["reflections_px"], refl[n:]])
            dose = out.get("dose_e")
            if dose is not None and self._per_dose:
                # the peaks a detector shows at the dose this sample was recorded at (not the reference dose)
                from stemforge.sim.labels import present

                visible = present(
                    self._read("labels/reflections_intensity", i),
                    self._read("labels/reflections_background", i),
                    out["dose_e"],
                )
        pattern, probe = normalise(pattern, probe, **self.normalisation)
        peaks = np.full((self.max_peaks, 2), np.nan, dtype=np.float32)
        vis = refl[:n][visible[:n]][: self.max_peaks]
        peaks[: len(vis)] = vis
        sid = int(self._read("labels/structure_id", i))
        sample = {
            "pattern": pattern[None],
            "probe": probe[None],
            "vg_map": maps["vg_map"][None],
            "disk_map": maps["disk_map"][None],
            "peaks": peaks,
            "thickness_nm": np.float32(self._read("labels/thickness_A", i) / 10.0),
            "phase": np.int64(sid),
            "rotation": np.asarray(self._read("labels/rotation", i), dtype=np.float32),
            "symmetry": self.symmetry[sid],
            "index": np.int64(i),
            "dose_e": np.float32(np.nan if dose is None else dose),
        }
        # copies: a view would keep its whole decoded chunk alive as long as the sample lives
        return {k: torch.from_numpy(np.array(v)) for k, v in sample.items()}


class ChunkShuffleSampler(Sampler):
    """Shuffles the order of zarr chunks and the order within each chunk, so that every chunk is decoded once
    per epoch while batches still mix chunks over the epoch. ``set_epoch`` (or a new seed) reshuffles.

    ``mix_chunks`` > 1 shuffles the members of that many chunks together (the dataset must then cache as many
    chunks): a store whose chunks each hold one specimen group (one structure and orientation, as the corpus)
    otherwise gives batches of a single structure, which a classifier with BatchNorm cannot learn from."""

    def __init__(self, indices, chunk_size: int, seed: int = 0, shuffle: bool = True, mix_chunks: int = 1):
        self.positions = np.arange(len(indices))
        self.chunk_of = np.asarray(indices) // int(chunk_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.mix_chunks = max(1, int(mix_chunks))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.positions)

    def __iter__(self):
        if not self.shuffle:
            yield from self.positions.tolist()
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        chunks = rng.permutation(np.unique(self.chunk_of))
        for b in range(0, len(chunks), self.mix_chunks):
            members = self.positions[np.isin(self.chunk_of, chunks[b : b + self.mix_chunks])]
            yield from rng.permutation(members).tolist()
