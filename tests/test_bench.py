"""python -m scalor.bench: the JSON contract (fields and types), not timings."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["experiment=dsprites_easy", "data.img_size=64", "grid=4x4", "data.batch_size=1", "data.seq_len=3",
        "model.glimpse_size=16", "model.max_num_obj=4", "bench.steps=2", "bench.warmup=1", "bench.threads=1"]


@pytest.mark.parametrize("mode", ["train", "track"])
def test_bench_prints_json_last(mode):
    proc = subprocess.run([sys.executable, "-m", "scalor.bench", *TINY, f"bench.mode={mode}", "bench.profile=5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("median_step_s", "min_step_s", "max_step_s", "peak_rss_mb", "params", "frames_per_s", "config"):
        assert key in result, key
    assert result["min_step_s"] <= result["median_step_s"] <= result["max_step_s"]
    assert result["peak_rss_mb"] > 0 and result["params"] > 1_000_000
    assert result["frames_per_s"] == pytest.approx(3 / result["median_step_s"], rel=0.01)
    assert result["config"]["mode"] == mode and result["config"]["img_size"] == 64
    assert result["config"]["model"]["max_num_obj"] == 4
    # dsprites_easy turns both glimpse-network checkpoints off (16 px glimpses): the JSON says what ran
    assert result["config"]["checkpointing"] == {"decoder": False, "encoder": False}
    # The measured process holds the model and its input, not the framework (the input is drawn in a child).
    assert result["lightning_imported"] is False and 0 < result["baseline_rss_mb"] <= result["peak_rss_mb"]
    assert result["config"]["precision"] == "32-true"
    assert "CPU cores" in result["hardware"] or "x " in result["hardware"]  # the machine it was measured on
    # bench.profile: the top operators of one extra, untimed step
    rows = result["profile"]
    assert len(rows) == 5 and all(r["op"] and 0 < r["self_pct"] <= 100 for r in rows)
    assert [r["self_ms"] for r in rows] == sorted((r["self_ms"] for r in rows), reverse=True)


def test_bench_bf16_autocast_runs_and_is_recorded():
    proc = subprocess.run([sys.executable, "-m", "scalor.bench", *TINY, "trainer.precision=bf16-mixed"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["config"]["precision"] == "bf16-mixed" and result["median_step_s"] > 0


def test_bench_bad_mode_is_one_line_exit_2():
    proc = subprocess.run([sys.executable, "-m", "scalor.bench", *TINY, "bench.mode=fly"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: bench.mode=fly is unknown: use train or track."]
    proc = subprocess.run([sys.executable, "-m", "scalor.bench", *TINY, "trainer.precision=16-mixed"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: trainer.precision=16-mixed is not measured by the benchmark: use 32-true or bf16-mixed."]
    proc = subprocess.run([sys.executable, "-m", "scalor.bench", *TINY, "model.glimpse_size=24"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: model.glimpse_size=24 is not supported: use one of (16, 32, 64)."]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a CUDA GPU")
def test_bench_cuda_without_gpu_is_one_line_exit_2():
    proc = subprocess.run([sys.executable, "-m", "scalor.bench", *TINY, "bench.device=cuda"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: bench.device=cuda but no CUDA GPU is visible: use bench.device=auto or bench.device=cpu."]


def _benchmarks_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmarks_script", ROOT / "scripts" / "benchmarks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmarks_track_case_takes_the_newest_crowded_checkpoint(tmp_path, monkeypatch):
    script = _benchmarks_script()
    monkeypatch.setattr(script, "ROOT", tmp_path)
    assert script.newest_checkpoint("dsprites_crowded") is None
    for run in ("2026-12-01_10-00-00_000000", "2026-12-03_09-00-00_000000", "2026-12-02_10-00-00_000000"):
        (tmp_path / "outputs" / "dsprites_crowded" / run / "checkpoints").mkdir(parents=True)
        (tmp_path / "outputs" / "dsprites_crowded" / run / "checkpoints" / "best-epoch001-step000100.ckpt").touch()
    (tmp_path / "outputs" / "dsprites_crowded" / "2026-12-03_09-00-00_000000" / "checkpoints" / "last.ckpt").touch()
    assert script.newest_checkpoint("dsprites_crowded") == Path(
        "outputs/dsprites_crowded/2026-12-03_09-00-00_000000/checkpoints/best-epoch001-step000100.ckpt")
    # the track cases measure the 8x8 model: the newest checkpoint of that grid
    for run, grid in (("2026-12-03_09-00-00_000000", 16), ("2026-12-02_10-00-00_000000", 8)):
        torch.save({"hyper_parameters": {"model": {"num_cell_h": grid}}},
                   tmp_path / "outputs" / "dsprites_crowded" / run / "checkpoints" / "best-epoch001-step000100.ckpt")
    assert script.newest_checkpoint("dsprites_crowded", script.CROWDED_GRID) == Path(
        "outputs/dsprites_crowded/2026-12-02_10-00-00_000000/checkpoints/best-epoch001-step000100.ckpt")
    assert "grid=8x8" in script.CROWDED_TRACK
    # the case with the trained checkpoint is the one the target is checked on
    case = next(c for c in script.CASES if script.CROWDED_CKPT in c[1] and c[3] is not None)
    assert "experiment=dsprites_crowded" in case[1] and "bench.mode=track" in case[1]
    assert case[3]({"frames_per_s": 25.0}) and not case[3]({"frames_per_s": 24.9})


def test_benchmark_cases_compose_the_configurations_they_name():
    """The paper cases run the model's own defaults on the crowded data, whatever the experiment tunes; the
    GPU cases run on CUDA with the slot budget pinned, so their option rows compare against one default."""
    from hydra import compose, initialize_config_dir

    script = _benchmarks_script()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        default = compose("bench")  # the model and execution defaults (conf/model, conf/execution)
        paper = compose("bench", overrides=script.B1)
        for key in ("no_background", "reject_duplicates"):
            assert paper.model[key] == default.model[key], key
        for key in ("checkpoint_decoder", "checkpoint_encoder"):
            assert paper.execution[key] == default.execution[key], key
        paper = paper.model
        assert (paper.glimpse_size, paper.max_num_obj) == (64, 45)
        for name, overrides, _, _ in script.GPU_CASES:
            overrides = [o for o in overrides if o != script.CROWDED_CKPT]
            cfg = compose("bench", overrides=overrides)
            assert cfg.bench.device == "cuda", name
            assert cfg.execution.fixed_slots is ("fixed_slots=true" in name), name
        for name, overrides, _, _ in script.CASES:
            if name.startswith("scaling:"):  # N sprites in 128 px frames, 16x16 grid, 16 px glimpses, a cap of N
                cfg = compose("bench", overrides=overrides)
                n = int(name.split(" obj")[0].rsplit(" ", 1)[1])
                assert (cfg.data.img_size, cfg.grid.num_cell_h, cfg.model.glimpse_size) == (128, 16, 16), name
                assert cfg.data.min_objects == cfg.data.max_objects == cfg.model.max_num_obj == n, name


def test_benchmarks_against_a_commit_measures_both_trees_alternating(tmp_path):
    """--against REV: each chosen case on REV (a temporary worktree) and on this tree, round after round."""
    out = tmp_path / "ab.json"
    tiny = ["data.batch_size=1", "data.seq_len=2", "model.max_num_obj=4", "bench.steps=1", "bench.warmup=1",
            "bench.threads=1"]
    proc = subprocess.run([sys.executable, "scripts/benchmarks.py", "--against", "HEAD", "--only",
                           "64px 4x4, 10 obj, glimpse 16", "--rounds", "1", "--ab-json", str(out), "--extra", *tiny],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())["results"]
    assert [r["code"].rsplit(" ", 1)[1] for r in results] == ["(before)", "(after)"]
    assert all(r["case"] == "64px 4x4, 10 obj, glimpse 16, T10, B4, train" and r["overrides"][-6:] == tiny
               and r["config"]["model"]["max_num_obj"] == 4 for r in results)
    assert "| 64px 4x4, 10 obj, glimpse 16, T10, B4, train |" in proc.stdout and "x |" in proc.stdout
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "scalor-bench-" not in worktrees  # removed afterwards


def test_before_after_table_takes_the_median_of_the_rounds():
    script = _benchmarks_script()
    rows = [{"case": "c", "code": f"abc ({kind})", "median_step_s": t, "peak_rss_mb": m}
            for kind, t, m in (("before", 4.0, 900), ("after", 2.0, 800), ("before", 3.0, 950), ("after", 1.0, 700),
                               ("before", 5.0, 910), ("after", 2.5, 820))]
    assert script.ab_table(rows).splitlines()[-1] == "| c | 4.00, 3.00, 5.00 | 2.00, 1.00, 2.50 | 2.00x | 950 -> 820 |"


def test_benchmarks_against_an_unknown_revision_or_case_is_one_line_exit_2():
    for args in (["--against", "no-such-revision", "--only", "64px"], ["--against", "HEAD", "--only", "no such case"]):
        proc = subprocess.run([sys.executable, "scripts/benchmarks.py", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith("error: ")
