"""benchmarks/run_all.py: RESULT parsing and the rewrite of RESULTS.md's generated block."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
run_all = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_all)


def test_parse_results_reads_every_key():
    out = "noise\nRESULT ratio=275.3 max_rel_dev=6.9e-05 fft_share=0.16\nRESULT val_peak_f1=0.43 chance_f1=0.12\n"
    vals = run_all.parse_results(out)
    assert vals == {"ratio": 275.3, "max_rel_dev": 6.9e-05, "fft_share": 0.16, "val_peak_f1": 0.43, "chance_f1": 0.12}


def test_block_is_replaced_and_hand_written_sections_kept(tmp_path, monkeypatch):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Measured results\n\n## Hand-written section\nkeep me\n")
    monkeypatch.setattr(run_all, "RESULTS", results)
    state = {
        "machine": {"cpu": "cpu", "cores": 2, "memory": "24 GiB", "gpu": "none", "versions": {"python": "3.11"}},
        "runs": {
            "augment": {
                "rc": 0,
                "wall_s": 40.0,
                "values": {"patterns_per_s_per_core": 480.0},
                "args": ["--quick"],
                "date": "d",
            },
            "sim_throughput": {"rc": 1, "wall_s": 3.0, "values": {}, "args": ["--quick"], "date": "d"},
        },
    }
    run_all.write_results(run_all.render(state))
    first = results.read_text()
    assert "keep me" in first and "| augment |" in first and "**no**" in first  # 480 < 500 target
    assert "failed (exit 1)" in first and "| analysis |" in first and "not run" in first
    state["runs"]["augment"]["values"]["patterns_per_s_per_core"] = 520.0
    run_all.write_results(run_all.render(state))
    second = results.read_text()
    assert second.count(run_all.BEGIN) == 1 and "520" in second and "| yes |" in second and "keep me" in second
