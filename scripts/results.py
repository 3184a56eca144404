"""Write docs/results.md (and docs/results/<experiment>/*) from training run folders.

    python scripts/results.py                          # the newest finished fit run of every experiment
    python scripts/results.py outputs/dsprites_easy/2026-11-22_10-00-00_000000 [...]   # several of one experiment:
                                                       # its newest first, then the earlier ones

Only the experiments of the given (or found) runs are rewritten: the page keeps the sections of the others as
they are, so a run folder that lives on another machine does not have to be present to update one experiment.
Within a rewritten experiment, the runs the page already shows and that are not given again stay on it as earlier
runs (their figures move to a folder of their own); `--replace` drops them instead.

A run folder is what `python run.py task=fit ...` leaves: summary.json (command, hardware, wall time, steps,
test metrics), csv/version_*/metrics.csv (the CSV logger's history) and media/test_tracking.{mp4,png}.
Per experiment the page gets a table row, loss and validation curves (PNG) and the tracking video and panel
of the first test sequence; where `task=track ... groundtruth=gt.txt` tracked one of the run's checkpoints, also
that score (the newest track run's figure of a few frames and a half-size excerpt of its tracks.mp4). Nothing is
typed in: rerun the commands, then this script.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scalor.metrics.errors import TOUCH_GAP  # noqa: E402
from scalor.summary import SUMMARY_FILE, read_summary  # noqa: E402

COLUMNS = [("MOTA", "test/mota"), ("MOTP", "test/motp"), ("IDF1", "test/idf1"), ("ID sw.", "test/id_switches"),
           ("count acc.", "test/count_acc"), ("count MAE", "test/count_mae"), ("NLL (nats/seq)", "test/nll"),
           ("neg. ELBO", "test/neg_elbo")]
START, END = "<!-- results:start -->", "<!-- results:end -->"


def newest_runs(output_root: Path) -> list[Path]:
    """The newest run folder with a finished task=fit summary, per experiment folder under output_root."""
    runs = []
    for exp in sorted(p for p in output_root.iterdir() if p.is_dir()):
        done = [s.parent for s in exp.glob(f"*/{SUMMARY_FILE}") if read_summary(s.parent)["task"] == "fit"]
        if done:
            runs.append(max(done, key=lambda p: read_summary(p)["finished"]))
    return runs


def history(run_dir: Path) -> list[dict]:
    """Rows of the CSV logger's metrics.csv (all versions of a resumed run, in order)."""
    rows: list[dict] = []
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])):
        with path.open() as f:
            rows.extend(csv.DictReader(f))
    return rows


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in rows:
        if row.get(key) not in (None, "") and row.get("step") not in (None, ""):
            xs.append(int(float(row["step"])))
            ys.append(float(row[key]))
    return xs, ys


def plot_curves(rows: list[dict], path: Path, title: str) -> bool:
    """Training loss (negative ELBO) and validation MOTA, count accuracy and IDF1 (without ground truth: the objects
    per frame in training and validation), against optimiser steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = series(rows, "train/neg_elbo")
    if not loss[0]:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    axes[0].plot(*loss, lw=0.8, label="train")
    val = series(rows, "val/neg_elbo")
    if val[0]:
        axes[0].plot(*val, "o-", ms=3, label="validation")
    axes[0].set_xlabel("optimiser step")
    axes[0].set_ylabel("negative ELBO (nats / frame)")
    axes[0].legend()
    for key, label in (("val/mota", "val MOTA"), ("val/count_acc", "val count accuracy"), ("val/idf1", "val IDF1")):
        xs, ys = series(rows, key)
        if xs:
            axes[1].plot(xs, ys, "o-", ms=3, label=label)
    axes[1].set_xlabel("optimiser step")
    if axes[1].lines:
        axes[1].set_ylim(min(0.0, *(series(rows, "val/mota")[1] or [0.0])), 1.0)
    else:  # no ground truth: the objects the model keeps per frame
        for key, label, style in (("train/count", "train", "-"), ("val/count", "validation", "o-")):
            xs, ys = series(rows, key)
            if xs:
                axes[1].plot(xs, ys, style, ms=3, lw=0.8, label=label)
        axes[1].set_ylabel("objects per frame")
    if axes[1].lines:
        axes[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float) and (abs(value) >= 100 or value.is_integer()):
        return f"{value:.0f}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def tracking_video(run_dir: Path) -> Path | None:
    """The first test sequence's tracking video the run drew last (visualisation callback or task=test)."""
    found = sorted(run_dir.glob("media/step_*/test_tracking_0.*"), key=lambda p: int(p.parent.name.split("_")[1]))
    found += sorted(run_dir.glob("media/test_tracking.*"))
    videos = [p for p in found if p.suffix in (".mp4", ".webm", ".avi")]
    return videos[-1] if videos else None


def video_strip(video: Path, path: Path, frames: int = 10) -> bool:
    """Write the first ``frames`` frames of a video as one PNG, five to a row."""
    import cv2
    import numpy as np

    cap = cv2.VideoCapture(str(video))
    images = []
    while len(images) < frames:
        ok, frame = cap.read()
        if not ok:
            break
        images.append(frame)
    cap.release()
    if not images:
        return False
    per_row = 5
    images += [np.zeros_like(images[0])] * (-len(images) % per_row)
    rows = [np.concatenate(images[i:i + per_row], 1) for i in range(0, len(images), per_row)]
    return bool(cv2.imwrite(str(path), np.concatenate(rows, 0)))


def beside(run_dir: Path, task: str) -> list[tuple[Path, dict]]:
    """(folder, summary) of the finished ``task`` runs in the same experiment folder as run_dir, oldest first."""
    found = [(path.parent, read_summary(path.parent)) for path in run_dir.parent.glob(f"*/{SUMMARY_FILE}")]
    return sorted(((f, s) for f, s in found if s["task"] == task), key=lambda x: x[1]["finished"])


def tests_of(run_dir: Path, checkpoint: str | None) -> list[dict]:
    """The summaries of the task=test runs of the same experiment that tested this run's checkpoint, oldest
    first (e.g. the NLL estimate, or other inference settings of the same weights)."""
    if not checkpoint:
        return []
    return [s for _, s in beside(run_dir, "test")
            if s.get("checkpoint") and Path(s["checkpoint"]).resolve() == Path(checkpoint).resolve()]


def tracks_of(run_dir: Path) -> list[tuple[Path, dict]]:
    """(folder, summary) of the task=track runs of the same experiment that tracked a checkpoint of this run and
    scored it against ground truth (``groundtruth=...``), oldest first."""
    ckpts = (run_dir / "checkpoints").resolve()
    return [(f, s) for f, s in beside(run_dir, "track")
            if s.get("checkpoint") and Path(s["checkpoint"]).resolve().parent == ckpts
            and "track/mota" in s["metrics"]]


TRACK_COLUMNS = [("MOTA", "track/mota"), ("MOTP", "track/motp"), ("IDF1", "track/idf1"),
                 ("ID sw.", "track/id_switches"), ("count acc.", "track/count_acc"), ("count MAE", "track/count_mae"),
                 ("annotated frames", "track/annotated_frames")]


def track_media(track_dir: Path, out: Path, name: str, frames: tuple[int, ...] = (101, 301, 501, 701),
                excerpt: int = 150) -> list[str]:
    """From a track run's tracks.mp4: a figure of the given (1-based) frames side by side, two to a row, and a
    half-size excerpt of the first ``excerpt`` frames; the page's lines for both."""
    import cv2
    import numpy as np

    video = track_dir / "tracks.mp4"
    if not video.is_file():
        return []
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    writer, shots, k = None, {}, 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        k += 1
        small = cv2.resize(frame, (frame.shape[1] // 2, frame.shape[0] // 2), interpolation=cv2.INTER_AREA)
        if k in frames:
            shots[k] = small
        if k <= excerpt:
            if writer is None:
                writer = cv2.VideoWriter(str(out / "tracks_excerpt.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                         (small.shape[1], small.shape[0]))
            writer.write(small)
        if k >= max(max(frames), excerpt):
            break
    cap.release()
    if writer is not None:
        writer.release()
    lines = []
    if shots:
        images = [shots[f] for f in sorted(shots)]
        images += [np.zeros_like(images[0])] * (len(images) % 2)
        rows = [np.concatenate(images[i:i + 2], 1) for i in range(0, len(images), 2)]
        cv2.imwrite(str(out / "tracks.jpg"), np.concatenate(rows, 0), [cv2.IMWRITE_JPEG_QUALITY, 85])
        lines += [f"![{name} whole-frame tracks](results/{name}/tracks.jpg)", "",
                  f"Frames {', '.join(map(str, sorted(shots)))} of tracks.mp4 (half size).", ""]
    if writer is not None:
        lines += [f"The first {min(k, excerpt)} frames of tracks.mp4 (half size): "
                  f"[results/{name}/tracks_excerpt.mp4](results/{name}/tracks_excerpt.mp4)", ""]
    return lines


def track_lines(run_dir: Path, out: Path, name: str, earlier: bool) -> list[str]:
    """The whole-frame tracking table (task=track runs scored against ground truth) and, for the newest run on
    the page, the newest track run's figure and excerpt."""
    tracked = tracks_of(run_dir)
    if not tracked:
        return []
    lines = ["Tracked over the whole footage by `task=track`, scored against ground truth on the frames it "
             "annotates (IoU >= 0.5):", "",
             "| track | tracker | " + " | ".join(c for c, _ in TRACK_COLUMNS) + " | wall time | frames/s |",
             "|" + "---|" * (len(TRACK_COLUMNS) + 4)]
    for i, (_, summary) in enumerate(tracked, 1):
        m = summary["metrics"]
        lines.append("| " + " | ".join([f"track {i}", summary.get("tracker") or "—"]
                                       + [fmt(m.get(k)) for _, k in TRACK_COLUMNS]
                                       + [duration(summary["wall_seconds"]), fmt(m.get("frames_per_s"))]) + " |")
    lines.append("")
    lines += [f"- track {i}: `{s['command']}` ({s['hardware']})" for i, (_, s) in enumerate(tracked, 1)] + [""]
    if not earlier:
        lines += track_media(tracked[-1][0], out, name)
    return lines


ERRORS = "test/errors/"


def count_bins(counts: list[int], most: int = 12, ranges: int = 10) -> list[tuple[int, int]]:
    """Columns of the count table: one per ground-truth count, or, with more than ``most`` of them, at most
    ``ranges`` ranges of equal width from the smallest to the largest count (only ranges that hold frames)."""
    if len(counts) <= most:
        return [(k, k) for k in counts]
    width = -(-(counts[-1] - counts[0] + 1) // ranges)
    starts = sorted({counts[0] + (k - counts[0]) // width * width for k in counts})
    return [(lo, min(lo + width - 1, counts[-1])) for lo in starts]


def error_lines(metrics: dict) -> list[str]:
    """Tables of where the test errors come from (``test/errors/*``, scalor.metrics.ErrorBreakdown); none if the
    run did not log them."""
    e = {k[len(ERRORS):]: v for k, v in metrics.items() if k.startswith(ERRORS) and v is not None}
    if "misses" not in e:
        return []
    n = lambda key: str(round(float(e.get(key, 0))))  # noqa: E731
    touching = "touching/frames" in e
    counts = count_bins(sorted(int(k.split("/")[1]) for k in e if k.startswith("by_gt/") and k.endswith("/frames")))
    per_bin = lambda what: " | ".join(  # noqa: E731
        str(sum(round(float(e.get(f"by_gt/{k}/{what}", 0))) for k in range(lo, hi + 1))) for lo, hi in counts)
    return [
        "Where the test errors are (`test/errors/*`): misses of objects at least half hidden behind others, with "
        "their centre inside a box matched to another object, inside a false positive (one object drawing two), "
        "or with no box near; false positives holding two or more object centres (merges), one, or none; frames "
        "whose count is off.", "",
        "| misses | hidden | in a matched box | in a false positive | no box near | false positives | merges "
        "| one centre | no centre |", "|" + "---|" * 9,
        "| " + " | ".join(n(k) for k in ("misses", "misses/hidden", "misses/in_matched", "misses/in_unmatched",
                                         "misses/free", "false_positives", "false_positives/merge",
                                         "false_positives/one", "false_positives/empty")) + " |", "",
        "| objects in the frame | " + " | ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in counts)
        + " | all |", "|" + "---|" * (len(counts) + 2),
        f"| frames | {per_bin('frames')} | {n('frames')} |",
        f"| count too low | {per_bin('under')} | {n('frames/under')} |",
        f"| count too high | {per_bin('over')} | {n('frames/over')} |",
        *([f"| two objects touching | {per_bin('touching')} | {n('touching/frames')} |",
           f"| of them too low | {per_bin('touching_under')} | {n('touching/under')} |"] if touching else []), "",
        f"Of the {n('frames/under')} frames counted too low, {n('frames/under_hidden')} hold an object at least half "
        f"hidden, {n('frames/under_first')} more are first frames, "
        + (f"{n('frames/under_carried')} more follow a first frame counted too low with every frame in between too "
           f"low as well, and {n('frames/under_other')} are none of these." if "frames/under_carried" in e else
           f"and {n('frames/under_other')} are neither.")
        + (f" Two objects touch (their boxes overlap or lie less than {TOUCH_GAP:g} px apart) in "
           f"{n('touching/under')} of the frames counted too low: {n('touching/under_hidden')} of those with a "
           f"hidden object, {n('touching/under_first')} of the first frames, {n('touching/under_carried')} of those "
           f"that follow one and {n('touching/under_other')} of the others." if touching else ""), ""]


def duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes >= 10 else f"{minutes:.1f} min"


def section(run_dir: Path, docs: Path, earlier: bool = False) -> str:
    """The page's part for one fit run; an ``earlier`` run of an experiment (not its newest on the page) gets a
    sub-heading and its figures in a folder of its own."""
    summary = read_summary(run_dir)
    name = summary["name"]
    retests = tests_of(run_dir, summary.get("checkpoint"))
    rows = [("fit", summary)] + [(f"re-test {i}", r) for i, r in enumerate(retests, 1)]
    rel = f"results/{name}/{run_dir.name}" if earlier else f"results/{name}"
    out = docs / rel
    out.mkdir(parents=True, exist_ok=True)
    heading = f"#### {name}, earlier run" if earlier else f"### {name}"
    resumed = re.search(r"(?:^|\s)ckpt_path=(?!null(?:\s|$))(\S+)", summary["command"])
    before = (f" (a fit resumed from `{resumed.group(1)}`: the command's time leaves out the part before, its steps "
              "count it)") if resumed else ""
    lines = [heading, "", f"`{summary['command']}`", "",
             f"Run folder `{run_dir.name}`; {summary['hardware']}; {duration(summary['wall_seconds'])} from start "
             f"to end of the command (data generation, training, validation, test); {summary['steps']} optimiser "
             f"steps{before}.", "",
             "| test | tracker | " + " | ".join(c for c, _ in COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 2)]
    lines += ["| " + " | ".join([label, r.get("tracker") or "—"] + [fmt(r["metrics"].get(k)) for _, k in COLUMNS])
              + " |" for label, r in rows]
    lines.append("")
    if retests:
        lines += ["The fit's own test, then the later tests of the same checkpoint:", ""]
        lines += [f"- re-test {i}: `{r['command']}`" for i, r in enumerate(retests, 1)] + [""]
    # one breakdown of the errors per distinct breakdown (a later test may know more kinds of error, or run
    # other inference settings); an older fit's breakdown is left out where a re-test of it knows more, or
    # counts the same errors with another count table (ground-truth counts above 64 were one row before)
    groups: dict = {}
    for label, r in rows:
        errs = tuple(sorted((k, v) for k, v in r["metrics"].items() if k.startswith(ERRORS) and v is not None))
        if errs:
            groups.setdefault(errs, []).append(label)
    kinds = {errs: {k for k, _ in errs} for errs in groups}
    totals = {errs: {kv for kv in errs if not kv[0].startswith(ERRORS + "by_gt/")} for errs in groups}
    for errs, labels in groups.items():
        if labels == ["fit"] and any(kinds[errs] < kinds[other] or (totals[errs] == totals[other] and other != errs)
                                     for other in groups):
            continue
        errors = error_lines(dict(errs))
        if errors and retests:
            errors[0] = f"From the {' and the '.join(labels)}. " + errors[0]
        lines += errors
    lines += track_lines(run_dir, out, name, earlier)
    if plot_curves(history(run_dir), out / "curves.png", name):
        lines += [f"![{name} curves]({rel}/curves.png)", ""]
    video = tracking_video(run_dir)
    if video is not None:
        shutil.copyfile(video, out / f"tracking{video.suffix}")
        if video_strip(video, out / "tracking.png"):
            lines += [f"![{name} tracking]({rel}/tracking.png)", ""]
        lines += [f"The first test sequence (input with tracked boxes, IDs and trails | reconstruction): "
                  f"[{rel}/tracking{video.suffix}]({rel}/tracking{video.suffix})", ""]
    return "\n".join(lines)


def experiment_sections(body: str) -> dict[str, str]:
    """The page's sections between the markers, by experiment: each starts at its ``### <name>`` heading
    (earlier runs are ``####`` sub-sections of it); text before the first heading is dropped."""
    sections: dict[str, list[str]] = {}
    name = None
    for line in body.strip("\n").split("\n"):
        if line.startswith("### "):
            name = line[4:].strip()
            sections[name] = []
        if name is not None:
            sections[name].append(line)
    return {k: "\n".join(v).rstrip("\n") + "\n" for k, v in sections.items()}


RUN_FOLDER = re.compile(r"^Run folder `([^`]+)`", re.M)


def page_runs(section_text: str) -> list[tuple[str, str, bool]]:
    """The runs an experiment's section on the page shows: (run folder name, its text, whether it is the
    section's newest run), split at the ``###``/``####`` headings; text without a run folder line is dropped."""
    parts, current = [], []
    for line in section_text.rstrip("\n").split("\n"):
        if line.startswith(("### ", "#### ")) and current:
            parts.append(current)
            current = []
        current.append(line)
    parts.append(current)
    found = []
    for lines in parts:
        text = "\n".join(lines).rstrip("\n") + "\n"
        match = RUN_FOLDER.search(text)
        if match:
            found.append((match.group(1), text, lines[0].startswith("### ")))
    return found


def as_earlier(name: str, folder: str, text: str, newest: bool, docs: Path) -> str:
    """A run the page showed that stays on it as an earlier run: the newest one's heading becomes a sub-heading
    and its figures move from results/<name>/ to results/<name>/<folder>/ (where earlier runs keep theirs)."""
    if not newest:
        return text
    src, dst = docs / "results" / name, docs / "results" / name / folder
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.is_file() and re.search(rf"\(results/{re.escape(name)}/{re.escape(path.name)}\)", text):
            shutil.move(str(path), dst / path.name)
    text = re.sub(rf"results/{re.escape(name)}/(?=[^/\s)\]]+[)\]])", f"results/{name}/{folder}/", text)
    return text.replace(f"### {name}\n", f"#### {name}, earlier run\n", 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run folders (default: newest fit run per experiment)")
    parser.add_argument("--outputs", type=Path, default=ROOT / "outputs", help="output root to search")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="where results.md goes")
    parser.add_argument("--replace", action="store_true",
                        help="drop the page's runs of a rewritten experiment that are not given again")
    args = parser.parse_args()
    runs = args.runs or newest_runs(args.outputs)
    missing = [r for r in runs if not (r / SUMMARY_FILE).is_file()]
    if missing:
        parser.error(f"{missing[0]} has no {SUMMARY_FILE}: pass the folder of a finished `python run.py` run")
    if not runs:
        parser.error(f"no finished runs under {args.outputs}: train first, e.g. python run.py experiment=dsprites_easy")
    # per experiment (in the order given) its newest run, then its earlier runs, newest first
    by_name: dict[str, list[Path]] = {}
    for run in runs:
        by_name.setdefault(read_summary(run)["name"], []).append(run)
    page = args.docs / "results.md"
    text = page.read_text() if page.is_file() else f"# Results\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        parser.error(f"{page} lacks the {START} ... {END} markers the table goes between")
    head, rest = text.split(START, 1)
    kept = experiment_sections(rest.split(END, 1)[0])
    # the page's earlier runs of a rewritten experiment move aside before its new figures are written
    given = {run.name for run in runs}
    earlier = {name: [] if args.replace else
               [as_earlier(name, folder, part, newest, args.docs) for folder, part, newest in page_runs(kept[name])
                if folder not in given]
               for name in by_name if name in kept}
    new = {name: "\n".join([section(run, args.docs, earlier=i > 0) for i, run in
                             enumerate(sorted(group, key=lambda r: read_summary(r)["finished"], reverse=True))]
                            + earlier.get(name, []))
           for name, group in by_name.items()}
    kept_or_new = [new.pop(name, old) for name, old in kept.items()]  # in the page's order; new experiments last
    body = "\n".join(kept_or_new + list(new.values()))
    page.write_text(f"{head}{START}\n{body}\n{END}{rest.split(END, 1)[1]}")
    print(f"wrote {page} ({len(runs)} runs)")


if __name__ == "__main__":
    main()
