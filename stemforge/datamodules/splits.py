"""Train / validation / test splits of a simulated dataset that hold out whole runs, structures, thickness
ranges or orientation regions, so validation measures generalisation rather than memorised neighbours.

All functions work on the per-pattern label arrays of a dataset (see ``stemforge.sim.generate.array_specs``) and return
three sorted index arrays. Patterns of one simulation run (a thickness series of one crystal, orientation and
probe) always fall in the same split by the ``random`` method.
"""

from __future__ import annotations

import math

import numpy as np

METHODS = ("random", "structure", "thickness", "orientation")


def _beam_directions_crystal(rotation: np.ndarray) -> np.ndarray:
    """Beam direction (+z in the lab) in each pattern's crystal Cartesian frame: ``Rᵀ ẑ``."""
    return np.asarray(rotation)[:, 2, :]


def split_indices(
    labels: dict,
    valid: np.ndarray,
    method: str = "random",
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    holdout_val=None,
    holdout_test=None,
    max_angle_deg: float = 10.0,
    structure_names=None,
    structures=None,
    seed: int = 0,
    group_runs: int = 1,
):
    """Split the valid patterns of a dataset.

    Parameters
    ----------
    labels : dict
        Arrays ``run_index``, ``structure_id``, ``thickness_A``, ``zone``, ``rotation`` (as needed).
    valid : ndarray of bool
        Patterns of completed chunks.
    method : {"random", "structure", "thickness", "orientation"}
        ``random``: whole runs at random with the given fractions. ``structure``: ``holdout_val`` /
        ``holdout_test`` list structure names. ``thickness``: they list ``[min_nm, max_nm]`` ranges.
        ``orientation``: they list zone axes such as ``"[111]"``; every pattern whose beam lies within
        ``max_angle_deg`` of such an axis or a symmetry-equivalent one (zone-axis and random orientations
        alike; needs ``structures``) is held out.
    structure_names : list of str
        Names by structure id (dataset attrs ``structures``).
    structures : list of pymatgen Structure
        By structure id, for the orientation method (lattice and proper point group).
    group_runs : int
        ``random``: keep blocks of this many consecutive runs together (a dataset's specimen groups, its
        ``sampling.optics_per_specimen``: runs of one group share structure, orientation, energy and α), so that
        validation holds orientations and optics never trained on.

    Returns
    -------
    train, val, test : ndarray of int
    """
    if method not in METHODS:
        raise ValueError(f"split method must be one of {METHODS}, got {method!r}")
    idx = np.flatnonzero(valid)
    if len(idx) == 0:
        raise ValueError("the dataset has no completed patterns to split")
    n = len(valid)
    hv, ht = list(holdout_val or []), list(holdout_test or [])
    if method == "random":
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(f"val_fraction + test_fraction must lie in [0, 1), got {val_fraction} + {test_fraction}")
        if int(group_runs) < 1:
            raise ValueError(f"group_runs must be >= 1, got {group_runs}")
        runs = np.asarray(labels["run_index"]) // int(group_runs)
        uniq = np.unique(runs[idx])
        perm = np.random.default_rng(seed).permutation(uniq)
        n_val = int(math.ceil(val_fraction * len(uniq))) if val_fraction > 0 else 0
        n_test = int(math.ceil(test_fraction * len(uniq))) if test_fraction > 0 else 0
        if n_val + n_test >= len(uniq):
            raise ValueError(f"{len(uniq)} simulation runs are too few for the requested validation/test fractions")
        val_runs, test_runs = set(perm[:n_val]), set(perm[n_val : n_val + n_test])
        in_val = np.isin(runs, list(val_runs))
        in_test = np.isin(runs, list(test_runs))
    elif method == "structure":
        names = list(structure_names or [])
        for name in hv + ht:
            if name not in names:
                raise ValueError(f"held-out structure {name!r} is not in the dataset ({names})")
        sid = np.asarray(labels["structure_id"])
        in_val = np.isin(sid, [names.index(s) for s in hv])
        in_test = np.isin(sid, [names.index(s) for s in ht])
    elif method == "thickness":
        t_nm = np.asarray(labels["thickness_A"]) / 10.0

        def within(ranges):
            m = np.zeros(n, dtype=bool)
            for r in ranges:
                if len(r) != 2 or r[0] > r[1]:
                    raise ValueError(f"thickness holdouts are [min_nm, max_nm] pairs, got {r}")
                m |= (t_nm >= r[0]) & (t_nm <= r[1])
            return m

        in_val, in_test = within(hv), within(ht)
    else:
        beam = _beam_directions_crystal(labels["rotation"])
        sid = np.asarray(labels["structure_id"])

        def region(axes):
            m = np.zeros(n, dtype=bool)
            if not axes:
                return m
            if structures is None:
                raise ValueError("the orientation split needs the structures (lattices and point groups)")
            from stemforge.sim.orientations import parse_zone_axis, proper_point_group

            cos_max = math.cos(math.radians(max_angle_deg))
            for k, st in enumerate(structures):
                members = np.flatnonzero(sid == k)
                if len(members) == 0:
                    continue
                ops = proper_point_group(st)
                for label in axes:
                    d = np.asarray(parse_zone_axis(label)[0], dtype=float) @ st.lattice.matrix
                    dirs = ops @ (d / np.linalg.norm(d))  # every symmetry-equivalent axis (and its reverse)
                    near = np.abs(beam[members] @ dirs.T).max(axis=1) >= cos_max
                    m[members[near]] = True
            return m

        in_val, in_test = region(hv), region(ht)
    in_val &= ~in_test
    train = np.setdiff1d(idx, np.flatnonzero(in_val | in_test))
    val = np.intersect1d(idx, np.flatnonzero(in_val))
    test = np.intersect1d(idx, np.flatnonzero(in_test))
    if len(train) == 0:
        raise ValueError(f"split {method!r} leaves no training patterns")
    return train, val, test
