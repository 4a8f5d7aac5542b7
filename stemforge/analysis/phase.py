"""Phase maps: which crystal's kinematic templates match each pattern best.

Every candidate phase is matched with :func:`stemforge.analysis.orientation.orientation_map` (its best orientation per
scan
position); the phase whose best orientation scores highest wins. The score is the normalised kinematic score of
:mod:`stemforge.analysis.orientation` (a cosine similarity of weighted peak and template spots), so phases compare on
the
positions of their reflections (lattice spacings and angles) and on their relative kinematic intensities.

What it can and cannot separate: phases whose reflections sit at different radii or angles (Si vs Cu, a 4 %
lattice-parameter difference such as Si vs GaAs once reflections beyond ~1 Å⁻¹ are in the data) separate well;
phases with the same lattice and extinction-free reflections differing only in weak intensities (GaAs vs a
diamond-structure crystal with the same lattice parameter: only the weak 200-type reflections differ) are
separated only as far as those weak reflections are detected, and dynamical scattering (which fills in
kinematically forbidden reflections) blurs that difference further.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .braggvectors import BraggVectors
from .datacube import AnalysisError
from .orientation import OrientationMap, check_library_calibration, orientation_map
from .orientation_library import OrientationLibrary

__all__ = ["PhaseMap", "phase_map", "plot_phase_map"]

#: settings that must agree between libraries for their scores to be comparable
_COMPARABLE = ("k_max", "q_min", "sigma_q", "sigma_excitation", "intensity_power", "radial_power")


@dataclass
class PhaseMap:
    """Best-matching phase per scan position.

    Attributes
    ----------
    names : list of str
        Phase names; ``phase`` holds indices into it (−1: no phase matched, too few peaks or score below
        ``min_score``).
    phase : (Rx, Ry) int
    scores : (Rx, Ry, P) float
        Score of each phase's best orientation (0 where it had no match).
    best_score, margin : (Rx, Ry) float
        Score of the winning phase and its lead over the runner-up.
    orientations : dict of name -> OrientationMap
        Each phase's orientation map (use the winner's at each position).
    """

    names: list
    scan_shape: tuple[int, int]
    phase: np.ndarray
    scores: np.ndarray
    best_score: np.ndarray
    margin: np.ndarray
    orientations: dict[str, OrientationMap] = field(repr=False, default_factory=dict)
    info: dict = field(default_factory=dict)

    def fractions(self) -> dict:
        """Fraction of matched positions per phase (and ``"none"`` for unmatched ones)."""
        n = self.phase.size
        out = {name: float(np.sum(self.phase == i)) / n for i, name in enumerate(self.names)}
        out["none"] = float(np.sum(self.phase < 0)) / n
        return out

    def rotation(self) -> np.ndarray:
        """(Rx, Ry, 3, 3) orientation of the winning phase at each position (NaN where none)."""
        out = np.full((*self.scan_shape, 3, 3), np.nan)
        for i, name in enumerate(self.names):
            sel = self.phase == i
            if name in self.orientations:  # an ML phase map has no orientations
                out[sel] = self.orientations[name].rotation[sel]
        return out

    def figure(self):
        """See :func:`plot_phase_map`."""
        return plot_phase_map(self)


def phase_map(
    bragg_vectors,
    libraries: dict | None = None,
    *,
    method: str = "classical",
    model=None,
    min_confidence: float | None = None,
    min_score: float = 0.0,
    allow_energy_mismatch: bool = False,
    progress: bool = True,
    **orientation_kwargs,
) -> PhaseMap:
    """Best-matching phase at every scan position.

    ``method="classical"`` (default) matches Bragg vectors against one template library per phase;
    ``method="ml"`` classifies the patterns themselves with a phase model of the registry
    (:func:`stemforge.analysis.properties.phase_map_ml`: ``bragg_vectors`` is then the scan, ``model`` defaults to
    :data:`~stemforge.analysis.properties.DEFAULT_PHASE_MODEL`, positions below ``min_confidence`` are unknown,
    −1; further keyword arguments go to it).

    Parameters
    ----------
    bragg_vectors : BraggVectors
        Calibrated peaks (``calibration.pixel_size_inv_A`` needed); with ``method="ml"`` a DataCube, array or path.
    libraries : dict of name -> OrientationLibrary
        One library per candidate phase, built at the data's energy with the same matching settings (k_max,
        q_min, σ_q, σ_s, intensity and radial powers) so that their scores compare.
    min_score : float
        Positions whose best score is below this get phase −1.
    **orientation_kwargs
        Passed to :func:`stemforge.analysis.orientation.orientation_map` (``refine``, ``min_peaks``, ...).

    Returns
    -------
    PhaseMap
    """
    if method == "ml":
        from .properties import DEFAULT_PHASE_MODEL, phase_map_ml

        if isinstance(bragg_vectors, BraggVectors):
            raise AnalysisError("phase_map(method='ml') classifies patterns: pass the scan (DataCube), not peaks")
        return phase_map_ml(
            bragg_vectors,
            model if model is not None else DEFAULT_PHASE_MODEL,
            min_confidence=min_confidence,
            progress=progress,
            **orientation_kwargs,
        )
    if method != "classical":
        raise AnalysisError(f"method must be 'classical' or 'ml', got {method!r}")
    if not isinstance(libraries, dict) or not libraries:
        raise AnalysisError("phase_map needs a non-empty dict {phase name: OrientationLibrary}")
    names = [str(k) for k in libraries]
    libs = list(libraries.values())
    for name, lib in zip(names, libs):
        if not isinstance(lib, OrientationLibrary):
            raise AnalysisError(f"phase {name!r}: expected an OrientationLibrary, got {type(lib).__name__}")
        check_library_calibration(bragg_vectors, lib, allow_energy_mismatch)
    ref = libs[0]
    for name, lib in zip(names[1:], libs[1:]):
        diff = [k for k in _COMPARABLE if not np.isclose(getattr(lib, k), getattr(ref, k))]
        if diff:
            raise AnalysisError(
                f"phase {name!r}: library settings {diff} differ from those of {names[0]!r}; "
                "build every phase's library with the same matching settings"
            )
    if not 0 <= float(min_score) < 1:
        raise AnalysisError(f"min_score must lie in [0, 1), got {min_score!r}")
    maps = {}
    for name, lib in zip(names, libs):
        maps[name] = orientation_map(
            bragg_vectors, lib, allow_energy_mismatch=allow_energy_mismatch, progress=progress, **orientation_kwargs
        )
    scores = np.stack([np.where(maps[n].valid, maps[n].score, 0.0) for n in names], axis=-1)
    order = np.argsort(-scores, axis=-1)
    best = np.take_along_axis(scores, order[..., :1], axis=-1)[..., 0]
    runner = np.take_along_axis(scores, order[..., 1:2], axis=-1)[..., 0] if len(names) > 1 else np.zeros_like(best)
    valid = np.any(np.stack([maps[n].valid for n in names]), axis=0) & (best > 0) & (best >= float(min_score))
    phase = np.where(valid, order[..., 0], -1).astype(np.int32)
    elapsed = sum(m.info["elapsed_s"] for m in maps.values())
    n_pos = int(np.prod(bragg_vectors.scan_shape))
    return PhaseMap(
        names,
        tuple(bragg_vectors.scan_shape),
        phase,
        scores,
        np.where(valid, best, 0.0),
        np.where(valid, best - runner, 0.0),
        maps,
        {"elapsed_s": elapsed, "patterns_per_s": n_pos / max(elapsed, 1e-9), "min_score": float(min_score)},
    )


def plot_phase_map(pmap: PhaseMap):
    """A matplotlib Figure: the phase of each position (categorical colours, black = none), the winning score and
    the margin over the runner-up phase."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(12, 4), layout="constrained")
    axs = fig.subplots(1, 3)
    base = [
        (0.12, 0.47, 0.71),
        (1.0, 0.5, 0.05),
        (0.17, 0.63, 0.17),
        (0.84, 0.15, 0.16),
        (0.58, 0.40, 0.74),
        (0.55, 0.34, 0.29),
        (0.89, 0.47, 0.76),
        (0.5, 0.5, 0.5),
        (0.74, 0.74, 0.13),
        (0.09, 0.75, 0.81),
    ]
    colors = [(0, 0, 0)] + [base[i % len(base)] for i in range(len(pmap.names))]
    axs[0].imshow(
        pmap.phase + 1, cmap=ListedColormap(colors), vmin=-0.5, vmax=len(colors) - 0.5, interpolation="nearest"
    )
    axs[0].legend(
        handles=[Patch(color=c, label=n) for c, n in zip(colors, ["none", *pmap.names])],
        loc="upper right",
        fontsize="small",
    )
    axs[0].set_title("phase")
    im = axs[1].imshow(
        np.where(pmap.phase >= 0, pmap.best_score, np.nan), cmap="viridis", vmin=0, vmax=1, interpolation="nearest"
    )
    fig.colorbar(im, ax=axs[1], label="score")
    axs[1].set_title("best score")
    im = axs[2].imshow(np.where(pmap.phase >= 0, pmap.margin, np.nan), cmap="magma", interpolation="nearest")
    fig.colorbar(im, ax=axs[2], label="score lead")
    axs[2].set_title("margin over the runner-up phase")
    for ax in axs:
        ax.set_xlabel("scan col")
        ax.set_ylabel("scan row")
    return fig
