"""Present reflections: electrons in each disk core of the noise-free pattern, the dose rule, and scoring against
it (hand-made patterns whose answers are known)."""

import numpy as np
import pytest

from stemforge.sim.labels import PRESENT_SNR, core_radius_px, disk_intensities, present

H = W = 64
YY, XX = np.mgrid[:H, :W]


def flat_disks(positions, amplitudes, radius=3.0, background=0.0):
    img = np.full((H, W), background)
    for (x, y), a in zip(positions, amplitudes):
        img[np.hypot(XX - x, YY - y) <= radius] += a
    return img


def test_disk_intensities_count_the_core_and_the_background_under_it():
    pos = np.array([(20.0, 24.0), (32.0, 24.0), (44.3, 40.6)])
    img = flat_disks(pos, [1e-3, 2e-5, 5e-4], background=1e-5)
    r = disk_intensities(img, pos, 3.0)
    assert r["core_px"] == 3.0  # lattice 12 px apart: min(3, 12 - 3 - 1) = 3
    n = r["core_pixels"]
    np.testing.assert_allclose(r["intensity"], n * (np.array([1e-3, 2e-5, 5e-4]) + 1e-5), rtol=1e-12)
    np.testing.assert_allclose(r["background"], n * 1e-5, rtol=1e-12)
    series = disk_intensities(np.stack([img, 2 * img]), pos, 3.0)  # a thickness series: (T, M)
    np.testing.assert_allclose(series["intensity"], [r["intensity"], 2 * r["intensity"]])


def test_core_radius_stays_inside_the_neighbours_rims():
    lattice = np.array([(x, y) for x in range(10, 60, 8) for y in range(10, 60, 8)], float)
    assert core_radius_px(lattice, 2.0) == 2.0  # small disks: the whole disk
    assert core_radius_px(lattice, 3.5) == pytest.approx(8 - 3.5 - 1)  # near-touching disks: 3.5 px
    assert core_radius_px(lattice, 5.0) == pytest.approx(2.0)  # overlapping disks: 8 - 5 - 1
    assert core_radius_px(lattice, 7.0) == 1.0  # heavily overlapping: at least 1 px
    with_holz = np.vstack([lattice, lattice[5] + 0.7])  # one stray point next to a lattice point
    assert core_radius_px(with_holz, 3.5) == pytest.approx(3.5)  # the median spacing ignores it


def test_present_depends_on_dose_as_the_rule_says():
    # a weak disk: 2e-5 per pixel over 29 core pixels on a 1e-5 background -> S = 5.8e-4·D, B = 2.9e-4·D
    inten, bg = np.array([29 * 3e-5]), np.array([29 * 1e-5])
    S = lambda d: d * (inten - bg)  # noqa: E731
    for dose in (1e3, 1e4, 1e5, 1e6):
        expected = S(dose) / np.sqrt(dose * inten) >= PRESENT_SNR
        assert present(inten, bg, dose)[0] == expected[0]
    assert PRESENT_SNR == 5.0  # the Rose criterion
    assert not present(inten, bg, 1e4)[0] and present(inten, bg, 1e5)[0]  # 1.97σ vs 6.2σ
    # no background: present from snr² = 25 electrons on
    assert present(np.array([2.5e-3]), np.array([0.0]), 1e4)[0]
    assert not present(np.array([2.4e-3]), np.array([0.0]), 1e4)[0]
    assert present(np.array([2.4e-3]), np.array([0.0]), 1e4, snr=3.0)[0]  # a 3σ rule would count it
    assert not present(np.array([np.nan]), np.array([0.0]), 1e9)[0]  # padding
    assert not present(np.array([1e-3]), np.array([2e-3]), 1e9)[0]  # below its background: never
    with pytest.raises(ValueError, match="positive"):
        present(inten, bg, 0)


def test_scores_use_present_reflections_and_report_the_radial_offset():
    """A finder that finds exactly the present reflections, 0.5 px inside the true lattice points: F1 1 against
    present ones, recall < 1 against the kinematic flag, radial offset −0.5 px while the per-axis means are ~0."""
    from stemforge.analysis import BraggVectors, Calibration
    from stemforge.analysis.braggvectors import PEAK_DTYPE
    from stemforge.analysis.validation import disk_scores, true_reflections

    centre = np.array([32.0, 32.0])
    g = np.array([(dx, dy) for dx in (-10, 0, 10) for dy in (-10, 0, 10)], float)
    truth = np.broadcast_to(centre + g, (2, 1, 9, 2)).copy()  # a (2, 1) scan; x = col, y = row
    intensity = np.broadcast_to(np.where(np.hypot(*g.T) < 12, 1e-2, 1e-7), (2, 1, 9)).copy()  # the corners: weak
    gt = {
        "reflections_px": truth,
        "reflections_visible": np.ones((2, 1, 9), bool),
        "reflections_intensity": intensity,
        "reflections_background": np.zeros((2, 1, 9)),
    }
    mask, meaning = true_reflections(gt, 1e4)
    assert mask.sum() == 2 * 5 and meaning.startswith("present (scored at 10000 e⁻/pattern")
    kin, meaning_k = true_reflections(gt, 1e4, "kinematic")
    assert kin.sum() == 18 and meaning_k == "kinematic"
    peaks = []
    for rx in range(2):
        for p in truth[rx, 0][mask[rx, 0]]:
            d = p - centre
            q = p - 0.5 * d / np.hypot(*d) if np.hypot(*d) > 0 else p
            peaks.append((rx, 0, q[1], q[0], 1.0, np.nan))
    bv = BraggVectors((2, 1), (64, 64), np.array(peaks, dtype=PEAK_DTYPE), Calibration(pixel_size_inv_A=0.03))
    s = disk_scores(bv, truth, mask)
    assert s["f1"] == 1.0 and s["radial_offset_px"] == pytest.approx(-0.5)
    assert s["pos_rmse_px"] == pytest.approx(np.sqrt(4 * 0.25 / 5))  # 4 of 5 moved 0.5 px, the direct beam not
    assert disk_scores(bv, truth, kin)["recall"] == pytest.approx(10 / 18)
    with pytest.raises(ValueError, match="truth must be one of"):
        true_reflections(gt, None, "visible")


def test_held_out_structures_are_in_no_shipped_training_config():
    """The accuracy benchmark's structures appear in no dataset config stemforge ships (default, si, corpus...)."""
    import yaml

    from stemforge.conf import CONF_DIR
    from stemforge.sim.structures import HELD_OUT_STRUCTURES, list_structures

    assert len(HELD_OUT_STRUCTURES) >= 3 and set(HELD_OUT_STRUCTURES) <= set(list_structures())
    for path in (CONF_DIR / "structure").glob("*.yaml"):
        names = set(yaml.safe_load(path.read_text())["names"])
        assert not names & set(HELD_OUT_STRUCTURES), path.name
