"""summary.json (scalor.summary) and the results page (scripts/results.py) from run folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from omegaconf import OmegaConf

from conftest import ROOT
from scalor.summary import read_summary, write_summary


def fake_run(root: Path, name: str, folder: str, task: str = "fit", metrics: dict | None = None,
             checkpoint: str | None = None, finished: str = "2026-01-01 00:00:00", tracker: str | None = None) -> Path:
    run = root / name / folder
    cfg = OmegaConf.create({"name": name, "paths": {"output_dir": str(run)}})
    write_summary(cfg, task, 125.0, 40, metrics or {}, checkpoint, tracker)
    data = json.loads((run / "summary.json").read_text())
    data["finished"] = finished
    (run / "summary.json").write_text(json.dumps(data))
    return run


def render_page(docs: Path, *runs: Path) -> str:
    """docs/results.md as scripts/results.py writes it from these run folders into a new docs folder."""
    docs.mkdir()
    proc = subprocess.run([sys.executable, "scripts/results.py", *map(str, runs), "--docs", str(docs)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return (docs / "results.md").read_text()


def test_summary_is_written_atomically_with_finite_metrics(tmp_path):
    cfg = OmegaConf.create({"name": "x", "paths": {"output_dir": str(tmp_path / "run")}})
    path = write_summary(cfg, "fit", 12.34, 7, {"test/mota": 0.5, "test/motp": float("nan"), "note": "text"}, None)
    summary = read_summary(path.parent)
    assert summary["steps"] == 7 and summary["wall_seconds"] == 12.3 and summary["task"] == "fit"
    assert summary["metrics"] == {"test/mota": 0.5, "test/motp": None}  # NaN -> null, text dropped
    assert summary["command"].startswith("python")
    assert "CPU cores" in summary["hardware"] or "x " in summary["hardware"]  # CPU, or "1x <GPU name>"
    assert not list(path.parent.glob("*.tmp"))


def test_results_page_from_run_folders(tmp_path):
    outputs = tmp_path / "outputs"
    ckpt = str(outputs / "easy" / "b" / "checkpoints" / "best.ckpt")
    fake_run(outputs, "easy", "a", metrics={"test/mota": 0.1}, finished="2026-01-01 00:00:00")
    run = fake_run(outputs, "easy", "b", checkpoint=ckpt, finished="2026-01-02 00:00:00", tracker="pick8",
                   metrics={"test/mota": 0.5, "test/motp": 0.8, "test/idf1": 0.7, "test/id_switches": 3.0,
                            "test/count_acc": 0.6, "test/count_mae": 0.45, "test/neg_elbo": -15000.0,
                            "test/errors/misses": 99.0, "test/errors/frames/under_other": 5.0})  # an older breakdown
    errors = {"misses": 9, "misses/hidden": 1, "misses/in_matched": 2, "misses/in_unmatched": 4, "misses/free": 2,
              "false_positives": 5, "false_positives/merge": 3, "false_positives/one": 2, "false_positives/empty": 0,
              "frames": 20, "frames/under": 6, "frames/under_hidden": 1, "frames/under_first": 2,
              "frames/under_carried": 2, "frames/under_other": 1, "frames/over": 1, "by_gt/1/frames": 8,
              "by_gt/1/under": 0, "by_gt/1/over": 1,
              "by_gt/3/frames": 12, "by_gt/3/under": 6, "by_gt/3/over": 0}
    fake_run(outputs, "easy", "c", task="test", checkpoint=ckpt,
             metrics={"test/nll": 1234.5, **{f"test/errors/{k}": float(v) for k, v in errors.items()}})
    other = {**errors, "misses": 7, "misses/free": 0}  # another test of the checkpoint (other settings)
    fake_run(outputs, "easy", "d", task="test", checkpoint=ckpt, finished="2026-01-03 00:00:00", tracker="online",
             metrics={"test/mota": 0.4, **{f"test/errors/{k}": float(v) for k, v in other.items()}})
    (run / "csv" / "version_0").mkdir(parents=True)
    (run / "csv" / "version_0" / "metrics.csv").write_text(
        "step,train/neg_elbo,val/neg_elbo,val/mota\n0,-100,,\n5,-200,,\n5,,-210,0.3\n")
    (run / "media" / "step_5").mkdir(parents=True)
    writer = cv2.VideoWriter(str(run / "media" / "step_5" / "test_tracking_0.avi"), cv2.VideoWriter_fourcc(*"MJPG"),
                             5, (32, 16))
    for t in range(3):
        writer.write(np.full((16, 32, 3), 40 * t, np.uint8))
    writer.release()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "results.md").write_text("# R\n\nintro\n<!-- results:start -->\nOLD-TABLE\n<!-- results:end -->\n\ntail\n")

    proc = subprocess.run([sys.executable, "scripts/results.py", "--outputs", str(outputs), "--docs", str(docs)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    page = (docs / "results.md").read_text()
    assert page.startswith("# R\n\nintro\n") and page.rstrip().endswith("tail") and "OLD-TABLE" not in page
    assert "| fit | pick8 | 0.500 | 0.800 | 0.700 | 3 | 0.600 | 0.450 | — | -15000 |" in page  # the fit's own test
    assert "| re-test 1 | — | — | — | — | — | — | — | 1234 | — |" in page  # a later test (tracker not recorded)
    assert "- re-test 1: `python" in page
    assert "40 optimiser steps" in page and "`python" in page
    assert "| 9 | 1 | 2 | 4 | 2 | 5 | 3 | 2 | 0 |" in page  # the error breakdown, from the test of the checkpoint
    assert "From the re-test 1. Where the test errors are" in page
    assert "| re-test 2 | online | 0.400 |" in page and "From the re-test 2. Where" in page  # each breakdown, labelled
    assert "| 7 | 1 | 2 | 4 | 0 | 5 | 3 | 2 | 0 |" in page
    assert "| objects in the frame | 1 | 3 | all |" in page and "| count too low | 0 | 6 | 6 |" in page
    assert "Of the 6 frames counted too low, 1 hold" in page and "2 more follow a first frame" in page
    assert "| 99 |" not in page  # the test run's breakdown of the same checkpoint replaces the fit's older one
    for name in ("curves.png", "tracking.png", "tracking.avi"):
        assert (docs / "results" / "easy" / name).is_file(), name
    assert cv2.imread(str(docs / "results" / "easy" / "tracking.png")).shape[:2] == (16, 5 * 32)


def test_results_page_with_earlier_runs_of_an_experiment(tmp_path):
    """Run folders given explicitly: per experiment the newest run first, then the earlier ones under their own
    sub-heading, each with its figures in a folder of its own."""
    outputs = tmp_path / "outputs"
    old = fake_run(outputs, "easy", "old", metrics={"test/mota": 0.1}, finished="2026-01-01 00:00:00")
    new = fake_run(outputs, "easy", "new", metrics={"test/mota": 0.2}, finished="2026-01-02 00:00:00")
    for run in (old, new):
        (run / "csv" / "version_0").mkdir(parents=True)
        (run / "csv" / "version_0" / "metrics.csv").write_text("step,train/neg_elbo\n0,-100\n5,-200\n")
    summary = json.loads((new / "summary.json").read_text())  # the new run resumed the old one's fit
    summary["command"] = "python run.py experiment=easy ckpt_path=outputs/easy/old/checkpoints/last.ckpt"
    (new / "summary.json").write_text(json.dumps(summary))
    summary = json.loads((old / "summary.json").read_text())  # an explicit null is no resumption
    summary["command"] = "python run.py experiment=easy ckpt_path=null"
    (old / "summary.json").write_text(json.dumps(summary))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "results.md").write_text("<!-- results:start -->\n<!-- results:end -->\n")
    proc = subprocess.run([sys.executable, "scripts/results.py", str(old), str(new), "--docs", str(docs)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    page = (docs / "results.md").read_text()
    assert page.count("a fit resumed from `outputs/easy/old/checkpoints/last.ckpt`") == 1
    assert page.index("a fit resumed from") < page.index("#### easy, earlier run")
    assert page.index("### easy") < page.index("| fit | — | 0.200 |") < page.index("#### easy, earlier run")
    assert page.index("#### easy, earlier run") < page.index("| fit | — | 0.100 |")
    assert "(results/easy/curves.png)" in page and "(results/easy/old/curves.png)" in page
    assert (docs / "results" / "easy" / "curves.png").is_file()
    assert (docs / "results" / "easy" / "old" / "curves.png").is_file()


def test_results_page_keeps_the_sections_of_experiments_not_given(tmp_path):
    """Updating one experiment leaves the others' sections (whose run folders may be elsewhere) as they were, and
    replaces that experiment's own section where it stood (text that names no run folder is not kept)."""
    run = fake_run(tmp_path / "outputs", "crowded", "a", metrics={"test/mota": 0.3})
    docs = tmp_path / "docs"
    docs.mkdir()
    kept = "### easy\n\nEASY-TABLE\n\n#### easy, earlier run\n\nEASY-OLD\n"
    (docs / "results.md").write_text(f"# R\n<!-- results:start -->\n{kept}\n### crowded\n\nCROWDED-OLD\n\n"
                                     "### dense\n\nDENSE-TABLE\n<!-- results:end -->\ntail\n")
    proc = subprocess.run([sys.executable, "scripts/results.py", str(run), "--docs", str(docs)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    page = (docs / "results.md").read_text()
    assert page.startswith(f"# R\n<!-- results:start -->\n{kept}\n### crowded\n") and "CROWDED-OLD" not in page
    assert page.index("| fit | — | 0.300 |") < page.index("### dense\n\nDENSE-TABLE\n") and page.endswith("tail\n")
    new = fake_run(tmp_path / "outputs", "mnist", "b", metrics={"test/mota": 0.4})
    subprocess.run([sys.executable, "scripts/results.py", str(new), "--docs", str(docs)], cwd=ROOT, check=True,
                   capture_output=True, timeout=300)
    page = (docs / "results.md").read_text()
    assert page.index("DENSE-TABLE") < page.index("### mnist") < page.index("| fit | — | 0.400 |") < page.index("tail")
    assert "| fit | — | 0.300 |" in page and "EASY-OLD" in page


def test_results_page_keeps_the_runs_it_showed_as_earlier_runs(tmp_path):
    """A new run of an experiment whose earlier runs live elsewhere: the page's runs stay as earlier runs (the
    newest one's figures move to a folder of their own), unless --replace drops them."""
    docs = tmp_path / "docs"
    (docs / "results" / "easy" / "r0").mkdir(parents=True)
    for name in ("curves.png", "tracking.webm"):
        (docs / "results" / "easy" / name).write_text("r1")
        (docs / "results" / "easy" / "r0" / name).write_text("r0")
    shown = ("### easy\n\n`python run.py`\n\nRun folder `r1`; 2 CPU cores.\n\nR1-TABLE\n\n"
             "![easy curves](results/easy/curves.png)\n\n[results/easy/tracking.webm](results/easy/tracking.webm)\n\n"
             "#### easy, earlier run\n\nRun folder `r0`; 2 CPU cores.\n\nR0-TABLE\n\n"
             "![easy curves](results/easy/r0/curves.png)\n")
    (docs / "results.md").write_text(f"<!-- results:start -->\n{shown}\n### dense\n\nD\n<!-- results:end -->\n")
    run = fake_run(tmp_path / "outputs", "easy", "r2", metrics={"test/mota": 0.9})
    (run / "csv" / "version_0").mkdir(parents=True)
    (run / "csv" / "version_0" / "metrics.csv").write_text("step,train/neg_elbo\n0,-100\n5,-200\n")
    proc = subprocess.run([sys.executable, "scripts/results.py", str(run), "--docs", str(docs)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    page = (docs / "results.md").read_text()
    order = ["### easy\n", "Run folder `r2`", "| fit | — | 0.900 |", "(results/easy/curves.png)", "#### easy, earlier run",
             "Run folder `r1`", "R1-TABLE", "(results/easy/r1/curves.png)", "[results/easy/r1/tracking.webm]",
             "#### easy, earlier run", "Run folder `r0`", "(results/easy/r0/curves.png)", "### dense"]
    at = [page.index(text, page.index(order[i - 1]) + 1 if i else 0) for i, text in enumerate(order)]
    assert at == sorted(at) and page.count("### easy\n") == 1
    assert (docs / "results" / "easy" / "r1" / "tracking.webm").read_text() == "r1"
    assert (docs / "results" / "easy" / "r0" / "curves.png").read_text() == "r0"
    assert (docs / "results" / "easy" / "curves.png").read_bytes().startswith(b"\x89PNG")  # the new run's figure
    subprocess.run([sys.executable, "scripts/results.py", str(run), "--docs", str(docs), "--replace"], cwd=ROOT,
                   check=True, capture_output=True, timeout=300)
    page = (docs / "results.md").read_text()
    assert "Run folder `r2`" in page and "R1-TABLE" not in page and "earlier run" not in page and "### dense" in page


def test_count_table_groups_many_counts_into_ranges():
    sys.path.insert(0, str(ROOT / "scripts"))
    from results import count_bins, error_lines

    assert count_bins([1, 2, 3, 5]) == [(1, 1), (2, 2), (3, 3), (5, 5)]
    assert count_bins(list(range(20, 51))) == [(lo, min(lo + 3, 50)) for lo in range(20, 51, 4)]
    metrics = {"test/errors/misses": 1.0, **{f"test/errors/by_gt/{k}/frames": 1.0 for k in range(80, 101)},
               "test/errors/by_gt/81/under": 1.0, "test/errors/by_gt/82/under": 1.0}
    lines = error_lines(metrics)
    assert "| objects in the frame | 80-82 | 83-85 | 86-88 | 89-91 | 92-94 | 95-97 | 98-100 | all |" in lines
    assert any(line.startswith("| frames | 3 | 3 | 3 | 3 | 3 | 3 | 3 |") for line in lines)
    assert any(line.startswith("| count too low | 2 | 0 |") for line in lines)


def test_breakdown_shows_touching_objects_only_where_the_test_counted_them():
    sys.path.insert(0, str(ROOT / "scripts"))
    from results import error_lines

    base = {"test/errors/misses": 3.0, "test/errors/frames/under": 4.0, "test/errors/frames/under_first": 1.0,
            "test/errors/frames/under_carried": 2.0, "test/errors/by_gt/2/frames": 10.0,
            "test/errors/by_gt/3/frames": 10.0, "test/errors/by_gt/3/under": 4.0}
    assert not any("touch" in line for line in error_lines(base))
    touching = {**base, "test/errors/touching/frames": 6.0, "test/errors/touching/under": 3.0,
                "test/errors/touching/under_first": 1.0, "test/errors/touching/under_carried": 2.0,
                "test/errors/by_gt/2/touching": 2.0, "test/errors/by_gt/3/touching": 4.0,
                "test/errors/by_gt/3/touching_under": 3.0}
    lines = error_lines(touching)
    assert "| two objects touching | 2 | 4 | 6 |" in lines and "| of them too low | 0 | 3 | 3 |" in lines
    assert any("less than 2 px apart) in 3 of the frames counted too low: 0 of those with a hidden object, 1 of the "
               "first frames, 2 of those that follow one and 0 of the others." in line for line in lines)


def test_a_fit_breakdown_with_another_count_table_gives_way_to_its_retest(tmp_path):
    """A fit whose count table capped counts at 64 (before the cap went) and a re-test of its checkpoint that
    counts the same errors: the page shows the re-test's table only."""
    outputs = tmp_path / "outputs"
    ckpt = str(outputs / "dense" / "a" / "checkpoints" / "best.ckpt")
    same = {"test/errors/misses": 5.0, "test/errors/frames": 2.0}
    run = fake_run(outputs, "dense", "a", checkpoint=ckpt, metrics={**same, "test/errors/by_gt/64/frames": 2.0})
    fake_run(outputs, "dense", "b", task="test", checkpoint=ckpt, finished="2026-01-02 00:00:00",
             metrics={**same, "test/errors/by_gt/80/frames": 1.0, "test/errors/by_gt/90/frames": 1.0})
    docs = tmp_path / "docs"
    page = render_page(docs, run)
    assert "| objects in the frame | 80 | 90 | all |" in page and "| 64 |" not in page
    assert "From the re-test 1. Where" in page and "From the fit" not in page


def test_results_script_refuses_a_folder_without_summary(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/results.py", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "has no summary.json" in proc.stderr


def test_results_page_shows_whole_frame_tracking_against_ground_truth(tmp_path):
    outputs = tmp_path / "outputs"
    run = fake_run(outputs, "walkers", "fit", checkpoint=str(outputs / "walkers" / "fit" / "checkpoints" / "x.ckpt"),
                   metrics={"test/neg_elbo": -900.0})
    ckpt = run / "checkpoints" / "last.ckpt"
    track = fake_run(outputs, "walkers", "track", task="track", checkpoint=str(ckpt), finished="2026-01-02 00:00:00",
                     metrics={"track/mota": 0.71, "track/motp": 0.8, "track/idf1": 0.75, "track/id_switches": 4.0,
                              "track/count_acc": 0.5, "track/count_mae": 0.45, "track/annotated_frames": 80.0,
                              "frames_per_s": 3.25}, tracker="backfill")
    fake_run(outputs, "walkers", "unscored", task="track", checkpoint=str(ckpt), metrics={"frames_per_s": 3.0})
    writer = cv2.VideoWriter(str(track / "tracks.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for t in range(120):
        writer.write(np.full((48, 64, 3), t, np.uint8))
    writer.release()
    docs = tmp_path / "docs"
    page = render_page(docs, run)
    assert "| track 1 | backfill | 0.710 | 0.800 | 0.750 | 4 | 0.500 | 0.450 | 80 | 2.1 min | 3.250 |" in page
    assert "| track 2 |" not in page  # the unscored track run is left out
    assert "results/walkers/tracks.jpg" in page and "results/walkers/tracks_excerpt.mp4" in page
    figure = cv2.imread(str(docs / "results" / "walkers" / "tracks.jpg"))
    assert figure.shape == (24, 64, 3)  # frame 101 at half size, beside a blank (frames 301 ... are beyond the end)
    cap = cv2.VideoCapture(str(docs / "results" / "walkers" / "tracks_excerpt.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 120
    cap.release()
