"""Specimen groups and the engine choice (stemforge.sim.engine, stemforge.sim.chunks): shared specimens, S-matrix =
multislice,
batched multislice = one multislice per run, the automatic choice picks the faster path, refusals."""

from pathlib import Path

import numpy as np
import pytest

from stemforge.sim.config import ConfigError, build_detector, validate
from stemforge.sim.config import compose_simulate as compose

ROOT = Path(__file__).resolve().parents[1]
# tiny: 32-px detector (0.03 1/Å/px, 33 Å cells), 0.3 Å sampling, 1 and 3 nm
TINY = [
    "structure=si",
    "sampling=fast",
    "detector.shape=[32,32]",
    "sampling.real_space_A=0.3",
    "sampling.thicknesses_nm=[1.0,3.0]",
    "orientation.mistilt_max_mrad=0",
    "sampling.frozen_phonons=0",
    "dataset.progress=false",
    "optics.semiangle_mrad={min:1.5,max:3.0}",
    "optics.defocus_A={min:-80,max:80}",
]


_CATALOGS = {}


def catalog_of(cfg):
    """build_catalog, cached per structure list and zone-axis setting (loading the library takes seconds)."""
    from stemforge.sim.chunks import build_catalog

    key = (tuple(cfg.structure.names), tuple(cfg.orientation.zone_axes), cfg.orientation.max_index)
    if key not in _CATALOGS:
        _CATALOGS[key] = build_catalog(cfg)
    return _CATALOGS[key]


def group(cfg, g=0):
    from stemforge.sim.chunks import optics_per_specimen, plan_run

    catalog = catalog_of(cfg)
    k = optics_per_specimen(cfg)
    return catalog, [plan_run(cfg, catalog, cfg.dataset.seed, r) for r in range(g * k, (g + 1) * k)]


def test_runs_of_a_group_share_the_specimen_and_draw_their_own_optics():
    from stemforge.sim.chunks import plan_run

    cfg = compose(
        *TINY,
        "structure.names=[Si,GaAs,Cu]",
        "orientation.random_fraction=0.5",
        "optics.energy=[200e3,300e3]",
        "sampling.optics_per_specimen=3",
        "dataset.chunk_runs=3",
    )
    catalog = catalog_of(cfg)
    specs = [plan_run(cfg, catalog, 7, r) for r in range(12)]
    for g in range(4):
        members = specs[3 * g : 3 * g + 3]
        first = members[0]
        for sp in members[1:]:
            assert (sp.structure_id, sp.zone, sp.zone_axis, sp.in_plane_deg, sp.phonon_seed) == (
                first.structure_id,
                first.zone,
                first.zone_axis,
                first.in_plane_deg,
                first.phonon_seed,
            )
            assert sp.optics.energy == first.optics.energy
            if first.random_rotation is not None:
                assert np.array_equal(sp.random_rotation, first.random_rotation)
        assert len({sp.optics.defocus_A for sp in members}) == 3
        assert len({tuple(sp.position_frac) for sp in members}) == 3
    # groups differ from one another, and a run's draws do not depend on which runs were planned before
    assert len({(sp.structure_id, sp.zone, sp.in_plane_deg) for sp in specs[::3]}) > 1
    again = plan_run(cfg, catalog, 7, 10)
    assert again.optics == specs[10].optics and np.array_equal(again.position_frac, specs[10].position_frac)


def test_k1_draws_everything_from_the_run_stream():
    """k = 1 keeps today's draws: every value comes from default_rng([seed, r]) in the original order."""
    from stemforge.sim.chunks import plan_run
    from stemforge.sim.config import draw

    cfg = compose(*TINY, "orientation.mistilt_max_mrad=0.7", "optics.energy=[200e3,300e3]")
    catalog = catalog_of(cfg)
    sp = plan_run(cfg, catalog, 3, 5)
    rng = np.random.default_rng([3, 5])
    assert int(rng.integers(len(catalog))) == sp.structure_id
    ab = {key: draw(v, rng) for key, v in cfg.optics.aberrations_A.items()}
    tilt_r = 0.7 * np.sqrt(rng.uniform())
    tilt_a = rng.uniform(0, 2 * np.pi)
    assert ab == sp.optics.aberrations_A
    assert np.allclose(sp.optics.tilt_mrad, (tilt_r * np.cos(tilt_a), tilt_r * np.sin(tilt_a)))
    assert draw(cfg.optics.energy, rng) == sp.optics.energy
    assert draw(cfg.optics.semiangle_mrad, rng) == sp.optics.semiangle_mrad


#: labels measured on the simulated patterns (electrons in each disk core): as close as the patterns are
PATTERN_LABELS = ("labels/reflections_intensity", "labels/reflections_background")


def _compare_groups(a, b, rel=1e-3):
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for key in ra:
            if key == "patterns":
                for pa, pb in zip(ra[key], rb[key]):
                    assert np.abs(pa - pb).max() <= rel * pb.max(), key
            elif key in PATTERN_LABELS:
                np.testing.assert_allclose(ra[key], rb[key], rtol=rel, atol=rel * 1e-3, err_msg=key)
            else:
                assert np.array_equal(ra[key], rb[key], equal_nan=ra[key].dtype.kind == "f"), key


@pytest.mark.parametrize("zone", ["100", "110"])
def test_smatrix_group_equals_multislice(zone):
    """One S-matrix for a group of 4 optics settings / positions: patterns and the disk intensities measured on
    them within 1e-3, every other label (present flags and disk maps included) identical."""
    from stemforge.sim.chunks import simulate_group

    cfg = compose(
        *TINY,
        "sampling.optics_per_specimen=4",
        "dataset.chunk_runs=4",
        f"orientation.zone_axes=[{zone}]",
        "orientation.in_plane_deg={min:0,max:360}",
    )
    catalog, specs = group(cfg)
    det = build_detector(cfg.detector)
    sm = simulate_group(cfg, catalog, specs, det, engine="smatrix")
    ms = simulate_group(cfg, catalog, specs, det, engine="multislice")
    _compare_groups(sm, ms)
    assert sm[0]["patterns"].shape == (2, 32, 32) and np.all(sm[0]["patterns"].sum(axis=(1, 2)) > 0.5)


def test_a_mistilt_per_specimen_is_shared_by_the_group_and_simulated_by_one_smatrix():
    """orientation.mistilt_per_specimen: every run of a group has the group's one mistilt (another group another
    one), so the automatic choice may take one tilted S-matrix for the group; it equals batched multislice."""
    from stemforge.sim.chunks import simulate_group
    from stemforge.sim.config import validate

    cfg = compose(
        *TINY,
        "orientation.mistilt_max_mrad=8",
        "orientation.mistilt_per_specimen=true",
        "sampling.optics_per_specimen=4",
        "dataset.chunk_runs=4",
        "orientation.zone_axes=[110]",
    )
    validate(cfg)
    validate(
        compose(
            *TINY, "sampling.engine=smatrix", "orientation.mistilt_max_mrad=8", "orientation.mistilt_per_specimen=true"
        )
    )
    catalog, specs = group(cfg)
    _, other = group(cfg, 1)
    tilts = {tuple(sp.optics.tilt_mrad) for sp in specs}
    assert len(tilts) == 1 and next(iter(tilts)) != (0.0, 0.0) and np.hypot(*next(iter(tilts))) <= 8.0
    assert tuple(other[0].optics.tilt_mrad) not in tilts
    assert len({sp.optics.semiangle_mrad for sp in specs}) == 4  # the optics still differ per run
    det = build_detector(cfg.detector)
    sm = simulate_group(cfg, catalog, specs, det, engine="smatrix")
    ms = simulate_group(cfg, catalog, specs, det, engine="multislice")
    _compare_groups(sm, ms)
    assert all(np.allclose(r["labels/mistilt_mrad"], next(iter(tilts))) for r in sm)


def test_smatrix_group_with_one_frozen_phonon_configuration_equals_multislice():
    """frozen_phonons = 1: the S-matrix is built on abTEM's displaced atoms of the run group's seed."""
    from stemforge.sim.chunks import simulate_group

    cfg = compose(
        *TINY,
        "sampling.optics_per_specimen=2",
        "dataset.chunk_runs=2",
        "orientation.zone_axes=[100]",
        "sampling.frozen_phonons=1",
        "sampling.thicknesses_nm=[1.0,2.0]",
    )
    catalog, specs = group(cfg)
    det = build_detector(cfg.detector)
    _compare_groups(
        simulate_group(cfg, catalog, specs, det, engine="smatrix"),
        simulate_group(cfg, catalog, specs, det, engine="multislice"),
    )


def test_batched_multislice_equals_one_multislice_per_run(silicon):
    """Stacked probes (same tilt) and a prebuilt potential shared by several tilts give each run's own result."""
    from stemforge.sim.engine import GroupRun, multislice_group
    from stemforge.sim.multislice import Phonons, simulate_cbed
    from stemforge.sim.optics import Optics
    from stemforge.sim.specimen import zone_axis_specimen

    spec = zone_axis_specimen(silicon, (1, 1, 0), thickness_A=20.0, min_extent_A=16.0)
    runs = [
        GroupRun(Optics(300e3, 2.0, defocus_A=30.0), np.array([5.0, 6.0])),
        GroupRun(Optics(300e3, 3.0, aberrations_A={"C30": 1e5}), np.array([7.0, 2.0])),
        GroupRun(Optics(300e3, 2.5, tilt_mrad=(0.4, -0.2)), np.array([6.0, 6.0])),
        GroupRun(Optics(300e3, 2.5, defocus_A=-20, source_size_A=0.3), np.array([6.0, 5.0])),
    ]
    kw = dict(sampling_A=0.2, phonons=Phonons(1, {"Si": 0.08}, 11), coherence_order=2)
    batched, sampling, t, grid = multislice_group(spec, runs, [10.0, 20.0], **kw)
    for run, pat in zip(runs, batched):
        ref, ref_sampling, ref_t, ref_grid = simulate_cbed(spec, run.optics, run.position_A, [10.0, 20.0], **kw)
        assert np.allclose(pat, ref, rtol=0, atol=1e-6 * ref.max())
        assert sampling == ref_sampling and np.array_equal(t, ref_t) and grid["gpts"] == ref_grid["gpts"]


@pytest.mark.parametrize(
    "overrides, expected",
    [
        # static zone axis: one repeat column per beam (Bloch path), 8 optics settings, 10 nm -> S-matrix (~1.6x)
        (
            [
                "sampling.optics_per_specimen=8",
                "dataset.chunk_runs=8",
                "orientation.zone_axes=[100]",
                "sampling.thicknesses_nm=[4.0,10.0]",
            ],
            "smatrix",
        ),
        # one frozen-phonon configuration: every beam through the whole displaced supercell, 2 runs -> multislice
        # (~2.5x)
        (
            [
                "sampling.optics_per_specimen=2",
                "dataset.chunk_runs=2",
                "orientation.zone_axes=[100]",
                "sampling.frozen_phonons=1",
                "sampling.thicknesses_nm=[1.0,2.0]",
            ],
            "multislice",
        ),
    ],
)
def test_auto_picks_the_faster_engine(overrides, expected):
    """auto's cost model picks the engine that was measured faster on these groups (S-matrix 1.6x faster on the
    first, multislice 2.5x on the second; the timings themselves belong to ``benchmarks/sim_engines.py``, not to a
    unit test, whose CPU times swing with the machine's load)."""
    cfg = compose(*TINY, *overrides)
    catalog, specs = group(cfg)
    det = build_detector(cfg.detector)
    assert _auto_choice(cfg, catalog, specs, det) == expected


def _auto_choice(cfg, catalog, specs, det):
    import logging

    from stemforge.sim.chunks import simulate_group

    records = []

    class Grab(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("stemforge.sim.chunks")
    handler, level = Grab(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        simulate_group(cfg, catalog, specs, det)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    line = next(r for r in records if r.startswith("runs "))
    return line.split(": ")[1].split(" ")[0]


def test_choice_rules():
    """Without measuring: blockers force multislice, k = 1 never takes the S-matrix, explicit requests win."""
    from stemforge.sim.chunks import group_specimen
    from stemforge.sim.engine import GroupRun, choose_group_engine
    from stemforge.sim.optics import Optics
    from stemforge.sim.smatrix import commensurate_sampling

    cfg = compose(*TINY, "sampling.optics_per_specimen=4", "dataset.chunk_runs=4", "orientation.zone_axes=[100]")
    catalog, specs = group(cfg)
    det = build_detector(cfg.detector)
    spec = group_specimen(cfg, catalog[0], specs, det, 30.0, smooth=True)
    s = commensurate_sampling(spec, 0.3)
    runs = [GroupRun(Optics(300e3, 2.0, defocus_A=float(i)), np.zeros(2)) for i in range(4)]
    choice = choose_group_engine("auto", runs, spec, s, 2, det, 0, True)
    assert choice.engine == "smatrix" and choice.beam_cost < 0.1
    assert choose_group_engine("auto", runs, spec, s, 2, det, 0, False).beam_cost == 1.0  # displaced atoms
    assert choose_group_engine("auto", runs[:1], spec, s, 2, det, 0, True).engine == "multislice"
    assert choose_group_engine("multislice", runs, spec, s, 2, det, 0, True).engine == "multislice"
    tilted = runs[:3] + [GroupRun(Optics(300e3, 2.0, tilt_mrad=(0.1, 0.0)), np.zeros(2))]
    coherent = runs[:3] + [GroupRun(Optics(300e3, 2.0, source_size_A=0.5), np.zeros(2))]
    for bad, fp in [(tilted, 0), (coherent, 0), (runs, 4)]:
        choice = choose_group_engine("auto", bad, spec, s, 2, det, fp, fp == 0)
        assert choice.engine == "multislice" and "impossible" in choice.reason
        with pytest.raises(ValueError, match="cannot simulate"):
            choose_group_engine("smatrix", bad, spec, s, 2, det, fp, fp == 0)


@pytest.mark.parametrize(
    "override, message",
    [
        ("orientation.mistilt_max_mrad=0.5", "beam tilt"),
        ("optics.source_size_A=[0.0,0.4]", "partial spatial coherence"),
        ("sampling.frozen_phonons=3", "frozen phonons > 1"),
    ],
)
def test_explicit_smatrix_is_refused_where_it_cannot_work(override, message):
    cfg = compose(*TINY, "sampling.engine=smatrix", override)
    with pytest.raises(ConfigError, match=message):
        validate(cfg)
    validate(compose(*TINY, "sampling.engine=smatrix"))
    validate(compose(*TINY, "sampling.engine=auto", override))


def test_group_settings_are_validated():
    with pytest.raises(ConfigError, match="multiple of sampling.optics_per_specimen"):
        validate(compose(*TINY, "sampling.optics_per_specimen=3", "dataset.chunk_runs=2"))
    with pytest.raises(ConfigError, match="sampling.engine"):
        validate(compose(*TINY, "sampling.engine=prism"))
    with pytest.raises(ConfigError, match="optics_per_specimen"):
        validate(compose(*TINY, "sampling.optics_per_specimen=0"))


def test_identity_config_keeps_old_datasets_resumable():
    from stemforge.sim.generate import identity_config

    plain = identity_config(compose(*TINY))
    assert "engine" not in plain["sampling"] and "optics_per_specimen" not in plain["sampling"]
    assert "cluster" not in plain
    grouped = identity_config(compose(*TINY, "sampling.optics_per_specimen=2"))
    assert grouped["sampling"]["engine"] == "auto" and grouped["sampling"]["optics_per_specimen"] == 2
    assert identity_config(compose(*TINY, "sampling.engine=smatrix"))["sampling"]["engine"] == "smatrix"
    assert identity_config(compose(*TINY, "cluster.address=tcp://127.0.0.1:1")) == plain


def test_a_semiangle_per_specimen_is_shared_by_the_group_and_leaves_other_draws_alone():
    """optics.semiangle_per_specimen: every run of a group has the group's one α (another group another one); the
    runs' defocus, aberrations and positions are drawn as without it; the setting is part of a dataset's identity
    only when on."""
    from stemforge.sim.generate import identity_config

    base = (*TINY, "sampling.optics_per_specimen=4", "dataset.chunk_runs=4", "orientation.zone_axes=[110]")
    cfg = compose(*base, "optics.semiangle_per_specimen=true")
    _, specs = group(cfg)
    _, other = group(cfg, 1)
    _, plain = group(compose(*base))
    alphas = {sp.optics.semiangle_mrad for sp in specs}
    assert len(alphas) == 1 and other[0].optics.semiangle_mrad not in alphas
    assert len({sp.optics.semiangle_mrad for sp in plain}) == 4
    for a, b in zip(specs, plain):
        assert a.optics.defocus_A == b.optics.defocus_A and np.array_equal(a.position_frac, b.position_frac)
        assert a.structure_id == b.structure_id and a.zone == b.zone and a.in_plane_deg == b.in_plane_deg
    assert "semiangle_per_specimen" not in identity_config(compose(*base))["optics"]
    assert identity_config(cfg)["optics"]["semiangle_per_specimen"] is True


def test_cli_refuses_smatrix_with_mistilt_before_writing(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out.zarr"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "simulate.py"),
            *TINY,
            "sampling.engine=smatrix",
            "orientation.mistilt_max_mrad=1.0",
            f"dataset.path={out}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "smatrix cannot simulate a beam tilt per run" in lines[0], (
        proc.stderr
    )
    assert not out.exists()


def test_grouped_dataset_is_deterministic(tmp_path):
    """A dataset of S-matrix groups, written twice (once resumed after losing a chunk), gives the same bytes."""
    import zarr

    from stemforge.sim.generate import generate_dataset

    args = [
        *TINY,
        "sampling.optics_per_specimen=2",
        "dataset.chunk_runs=2",
        "orientation.zone_axes=[100]",
        "dataset.num_patterns=8",
        "sampling.engine=smatrix",
    ]
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    generate_dataset(compose(*args, f"dataset.path={a}"))
    generate_dataset(compose(*args, f"dataset.path={b}"))
    g = zarr.open_group(str(b), mode="r+")
    g["chunk_complete"][1] = False
    g["patterns"][4:] = np.nan
    generate_dataset(compose(*args, f"dataset.path={b}"))
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    assert ga.attrs["status"] == gb.attrs["status"] == "complete"
    for name in ["patterns", "probes", "labels/thickness_A", "labels/defocus_A", "labels/probe_position_A"]:
        assert ga[name][:].tobytes() == gb[name][:].tobytes(), name
    p = ga["patterns"][:]
    assert np.isfinite(p).all() and len({float(v) for v in ga["labels/defocus_A"][:]}) == 4


def _slab(thickness_A: float, period_A: float | None):
    """A 6 × 6 Å Si column of ``thickness_A`` (periodic along the beam with ``period_A`` when given)."""
    from ase import Atoms

    from stemforge.sim.specimen import Specimen

    atoms = Atoms("Si", positions=[(3.0, 3.0, 0.3)], cell=[6.0, 6.0, thickness_A], pbc=True)
    return Specimen(atoms, np.eye(3), periodic=period_A is not None, period_A=period_A)


@pytest.mark.parametrize(
    "thickness_A, period_A, target_A, dz_A, num_slices",
    [
        (10.0, None, 2.0, 2.0, 5),  # box: ceil(10 / 2) = 5 slices of 2 Å (not 6)
        (9.0, None, 2.0, 1.8, 5),  # box: ceil(9 / 2) = 5 slices of 1.8 Å
        (4 * 5.431, 5.431, 2.0, 5.431 / 3, 12),  # period / target = 2.7: 3 slices per period, not a 2 Å remainder
        (3 * 3.8403, 3.8403, 2.0, 3.8403 / 2, 6),  # t / dz = 6.000000000000001: still 6 slices
        (3 * 1.5, 1.5, 2.0, 1.5, 3),  # a period thinner than the target: one slice per period
    ],
)
def test_slicing_rule(thickness_A, period_A, target_A, dz_A, num_slices):
    """The one slicing rule (stemforge.sim.setup.slicing) and the potential that every engine builds from it."""
    from stemforge.sim.setup import build_potential, simulation_setup, slicing

    spec = _slab(thickness_A, period_A)
    dz, n = slicing(spec, target_A)
    assert dz == pytest.approx(dz_A, rel=1e-12) and n == num_slices
    setup = simulation_setup(spec, [thickness_A], sampling_A=0.5, slice_thickness_A=target_A)
    assert (setup.slice_thickness_A, setup.num_slices, setup.planes) == (dz, n, (n - 1,))
    assert build_potential(spec.atoms, setup).num_slices == num_slices


def test_explicit_slices_avoid_abtems_extra_slice():
    """Why the potential gets explicit slices: abTEM 1.0.11 makes ceil(t / dz) slices, one too many here."""
    import abtem

    from stemforge.sim.setup import build_potential, simulation_setup

    spec = _slab(3 * 3.8403, 3.8403)
    setup = simulation_setup(spec, [spec.thickness_A], sampling_A=0.5)
    assert spec.thickness_A / setup.slice_thickness_A > 6
    assert abtem.Potential(spec.atoms, gpts=setup.gpts, slice_thickness=setup.slice_thickness_A).num_slices == 7
    assert build_potential(spec.atoms, setup).num_slices == setup.num_slices == 6


def test_setup_exit_planes():
    """Exit planes keep the request order; repeated and out-of-order thicknesses map onto the unique planes."""
    from stemforge.sim.setup import simulation_setup

    setup = simulation_setup(_slab(9.0, None), [9.0, 4.0, 0.0, 9.0], sampling_A=0.5)
    assert setup.planes == (4, 1, -1, 4) and setup.unique_planes == (-1, 1, 4)
    assert setup.plane_rows == [2, 1, 0, 2]
    assert np.array_equal(setup.thicknesses_A, [9.0, 3.6, 0.0, 9.0])
    assert setup.gpts == (12, 12) and setup.sampling_A == (0.5, 0.5)
    with pytest.raises(ValueError, match="exceeds the specimen"):
        simulation_setup(_slab(9.0, None), [12.0], sampling_A=0.5)


@pytest.mark.parametrize("kind", ["zone_axis", "box"])
def test_engines_share_one_setup(kind, silicon, monkeypatch):
    """simulate_cbed, multislice_group, build_smatrix and vacuum_probe simulate the same grid, slices and exit planes:
    those of stemforge.sim.setup.simulation_setup, down to the arguments abTEM's potential gets."""
    import abtem

    from stemforge.sim.engine import GroupRun, multislice_group
    from stemforge.sim.multislice import simulate_cbed, vacuum_probe
    from stemforge.sim.optics import Optics
    from stemforge.sim.orientations import zone_axis_rotation
    from stemforge.sim.setup import simulation_setup
    from stemforge.sim.smatrix import build_smatrix
    from stemforge.sim.specimen import oriented_box_specimen, zone_axis_specimen

    if kind == "zone_axis":
        spec = zone_axis_specimen(silicon, (1, 0, 0), thickness_A=12.0, min_extent_A=10.0)
        assert spec.periodic
    else:
        spec = oriented_box_specimen(silicon, zone_axis_rotation(silicon, (1, 1, 2)), (10.0, 10.0, 9.0))
        assert not spec.periodic
    thicknesses, sampling = [9.0, 4.0], 0.4
    expected = simulation_setup(spec, thicknesses, sampling_A=sampling, slice_thickness_A=2.0)

    potentials = []
    real = abtem.Potential

    def spy(*args, **kwargs):
        potentials.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(abtem, "Potential", spy)
    optics = [Optics(300e3, 1.0, defocus_A=20.0), Optics(300e3, 1.5)]
    runs = [GroupRun(o, np.array([3.0, 4.0])) for o in optics]
    kw = dict(sampling_A=sampling, slice_thickness_A=2.0)
    _, one_sampling, one_t, one_grid = simulate_cbed(spec, optics[0], runs[0].position_A, thicknesses, **kw)
    _, group_sampling, group_t, group_grid = multislice_group(spec, runs, thicknesses, **kw)
    S = build_smatrix(spec, 300e3, 1.5, thicknesses, bloch=False, **kw)
    assert len(potentials) == 3
    for p in potentials:
        assert p["gpts"] == expected.gpts
        assert p["slice_thickness"] == (expected.slice_thickness_A,) * expected.num_slices
    assert [p["exit_planes"] for p in potentials] == [expected.unique_planes, expected.unique_planes, None]

    assert S.setup == expected
    for grid, t in [(one_grid, one_t), (group_grid, group_t), (S.grid, S.thicknesses_A)]:
        assert grid["gpts"] == list(expected.gpts) and grid["sampling_A"] == list(expected.sampling_A)
        assert (grid["slice_thickness_A"], grid["num_slices"]) == (expected.slice_thickness_A, expected.num_slices)
        assert np.array_equal(t, expected.thicknesses_A)
    assert one_sampling == group_sampling == S.sampling == (1 / expected.extent_A[1], 1 / expected.extent_A[0])
    probe, probe_sampling = vacuum_probe(optics[0], spec.extent_A, sampling)
    assert probe.shape == expected.gpts[::-1] and probe_sampling == one_sampling
