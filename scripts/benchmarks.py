"""Run the benchmark suite and write docs/benchmarks.json and the table in docs/benchmarks.md.

    python scripts/benchmarks.py            # every case, then the table
    python scripts/benchmarks.py --table    # only re-render the table from docs/benchmarks.json
    python scripts/benchmarks.py --only 64px  # re-run the cases whose name contains "64px", keep the others
    python scripts/benchmarks.py --gpu      # the GPU suite: docs/benchmarks_gpu.json and its own table
    python scripts/benchmarks.py --against main --only 64px    # before/after: those cases of commit `main` (a
                                            # temporary git worktree) and of this tree, alternating, --rounds times;
                                            # docs/benchmarks_ab.json and a table of both with the speed-up

Each case is one `python -m scalor.bench` process (so peak RSS is per case). The table rows and the
targets of the performance issue come from CASES; nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DOCS = ROOT / "docs"
# the dsprites_crowded data at 128 px with a glimpse-64, 45-object model
CROWDED64 = ["experiment=dsprites_crowded", "data.img_size=128", "grid=8x8", "data.seq_len=10",
             "model.max_num_obj=45", "model.glimpse_size=64"]
# the paper's configuration: that, with the model's and execution group's own defaults where the experiment tunes
# them away (the background module, recomputation of the glimpse networks, discovery without duplicate rejection)
PAPER = CROWDED64 + ["model.no_background=false", "execution.checkpoint_decoder=auto",
                     "execution.checkpoint_encoder=auto", "model.reject_duplicates=false"]
SMALL_ANY = ["data.img_size=64", "grid=4x4", "data.seq_len=10", "model.max_num_obj=10"]  # the default model settings
SMALL = SMALL_ANY + ["model.glimpse_size=64"]
BATCH4 = ["data.batch_size=4", "bench.steps=3"]  # the 64 px cases: batch 4, 3 measured steps
SMALL_TARGET = ("median <= 1.5 s, RSS <= 1 GB",  # the 64 px cases' target (issue 7) and its check
                lambda r: r["median_step_s"] <= 1.5 and r["peak_rss_mb"] <= 1024)
EASY = ["experiment=dsprites_easy"]  # what `python run.py experiment=dsprites_easy` trains on (whole 10-frame sequences)
EASY_T5 = EASY + ["data.seq_len=5"]  # the same on the 5-frame windows of its earlier runs
EASY_4X4 = EASY_T5 + ["grid=4x4", "model.glimpse_size=32"]  # the same before its 8x8 grid
B1 = PAPER + ["data.batch_size=1", "bench.steps=3"]
TRACK = PAPER + ["data.batch_size=1", "bench.mode=track", "bench.steps=3"]
# what `python run.py experiment=dsprites_crowded task=track` runs (16 px glimpses), on a checkpoint it trained;
# measured on its 8x8 grid (the experiment's grid before 2026-12-07, now 16x16)
CROWDED_CKPT = "bench.ckpt_path=<dsprites_crowded>"  # replaced by --crowded-ckpt or the newest such checkpoint
CROWDED_GRID = 8
CROWDED_TRACK = ["experiment=dsprites_crowded", f"grid={CROWDED_GRID}x{CROWDED_GRID}", "data.batch_size=1",
                 "data.seq_len=10", "bench.mode=track", "bench.steps=3"]
# how the step grows with the objects per frame: dsprites_dense's model (128 px, 16x16 grid, 16 px glimpses) with
# N sprites in every frame and a cap of N objects, every proposal kept (no presence threshold, no rejection), so
# that fresh weights track exactly N objects in every frame (the JSON's mean_count)
def scaling(n: int) -> list[str]:
    return ["experiment=dsprites_dense", "data.batch_size=1", "data.seq_len=10", f"data.min_objects={n}",
            f"data.max_objects={n}", f"model.max_num_obj={n}", "model.reject_duplicates=false",
            "model.z_pres_disc_threshold=0.0", "model.explained_ratio_threshold=1.0", "bench.steps=3"]


# (name, overrides, target as text, check on the result or None)
CASES = [
    ("128px 8x8, 45 obj, glimpse 64, T10, B1, train", B1,
     "median <= 8 s, RSS <= 1.5 GB", lambda r: r["median_step_s"] <= 8 and r["peak_rss_mb"] <= 1536),
    ("same, B4, train", PAPER + ["data.batch_size=4", "bench.steps=2"],
     "RSS <= 4 GB", lambda r: r["peak_rss_mb"] <= 4096),
    ("same, B1, checkpoint_encoder=false", B1 + ["execution.checkpoint_encoder=false"], "(option off)", None),
    ("same, B1, checkpoint_encoder=false, checkpoint_decoder=false",
     B1 + ["execution.checkpoint_encoder=false", "execution.checkpoint_decoder=false"], "(options off)", None),
    ("same, B1, channels_last=false", B1 + ["execution.channels_last=false"], "(option off)", None),
    ("same, B1, trainer.precision=bf16-mixed", B1 + ["trainer.precision=bf16-mixed"], "(option on)", None),
    ("same, B1, fixed_slots=true", B1 + ["execution.fixed_slots=true"], "(option on)", None),
    ("same, B1, compile=true", B1 + ["execution.compile=true", "bench.warmup=2"], "(option on)", None),
    ("64px 4x4, 10 obj, glimpse 64, T10, B4, train", SMALL + BATCH4, *SMALL_TARGET),
    ("64px 4x4, 10 obj, glimpse 64, T10, B4, trainer.precision=bf16-mixed",
     SMALL + BATCH4 + ["trainer.precision=bf16-mixed"], "(option on)", None),
    ("64px 4x4, 10 obj, glimpse 32, T10, B4, train",
     SMALL_ANY + ["model.glimpse_size=32"] + BATCH4, *SMALL_TARGET),
    ("64px 4x4, 10 obj, glimpse 16, T10, B4, train",  # 16 px: not a size the spec defines (the easy experiments')
     SMALL_ANY + ["model.glimpse_size=16"] + BATCH4, *SMALL_TARGET),
    ("dsprites_easy as trained (64px 8x8, glimpse 16, T10, B8)", EASY + ["bench.steps=5"], "(the learning run)", None),
    ("dsprites_easy on 5-frame windows (its earlier 60-minute runs), T5, B8", EASY_T5 + ["bench.steps=5"],
     "(the earlier learning runs)", None),
    ("dsprites_easy 4x4, glimpse 32 (its earlier 60-minute run), T5, B8", EASY_4X4 + ["bench.steps=5"], "(the earlier learning run)", None),
    *((f"scaling: 128px 16x16, glimpse 16, {n} obj, T10, B1, train", scaling(n), "(objects per frame)", None)
      for n in (10, 50, 100)),
    # the crowded experiments' training steps as their yamls' CPU recipes train them (batch 4; dense: 2)
    ("dsprites_crowded as trained on a CPU (128px 16x16, glimpse 16, T10, B4)",
     ["experiment=dsprites_crowded", "data.batch_size=4", "bench.steps=3"], "(the learning run)", None),
    ("mnist_crowded as trained on a CPU (128px, glimpse 16, T10, B4)",
     ["experiment=mnist_crowded", "data.batch_size=4", "bench.steps=3"], "(the learning run)", None),
    ("dsprites_dense as trained on a CPU (128px 16x16, glimpse 16, T10, B2)",
     ["experiment=dsprites_dense", "data.batch_size=2", "bench.steps=3"], "(the learning run)", None),
    ("128px 8x8, 45 obj, T10, B1, track (fresh weights)", TRACK, "(glimpse 64: every slot present)", None),
    ("same, track, skip_glimpse_below=0.1", TRACK + ["execution.skip_glimpse_below=0.1"], "(approximation)", None),
    ("dsprites_crowded track (128px 8x8, 60 obj, glimpse 16), T10, B1, its trained checkpoint",
     CROWDED_TRACK + [CROWDED_CKPT], ">= 25 frames/s", lambda r: r["frames_per_s"] >= 25),
    ("dsprites_crowded track, fresh weights", CROWDED_TRACK, "(every slot present)", None),
    ("dsprites_crowded track, trained checkpoint, skip_glimpse_below=0.1", CROWDED_TRACK + [CROWDED_CKPT,
     "execution.skip_glimpse_below=0.1"], "(approximation)", None),
]

# The GPU suite (--gpu): the dsprites_crowded model (no background module, no recomputation) at the paper's size
# (128 px, 8x8, 45 objects, 64 px glimpses) on CUDA, with the larger batches a GPU allows; then the sizes the
# experiments train and track at. The slot budget is pinned (fixed_slots=auto turns it on on a GPU) so that
# each option row compares against the same default (a later override of the same key wins, as in Hydra).
GPU = ["bench.device=cuda"]
GPU_C64 = GPU + CROWDED64 + ["execution.fixed_slots=false"]
GPU_C64_B4 = GPU_C64 + ["data.batch_size=4", "bench.steps=5"]
GPU_CASES = [
    ("GPU: dsprites_crowded model, 128px 8x8, 45 obj, glimpse 64, T10, B1, train",
     GPU_C64 + ["data.batch_size=1", "bench.steps=5"], "", None),
    ("GPU: same, B4, train", GPU_C64_B4, "", None),
    ("GPU: same, B4, checkpoint_encoder=false, checkpoint_decoder=false (as the experiment sets: a repeat)",
     GPU_C64_B4 + ["execution.checkpoint_encoder=false", "execution.checkpoint_decoder=false"], "(the same config)",
     None),
    ("GPU: same, B4, trainer.precision=bf16-mixed", GPU_C64_B4 + ["trainer.precision=bf16-mixed"], "(option on)",
     None),
    ("GPU: same, B4, fixed_slots=true", GPU_C64_B4 + ["execution.fixed_slots=true"], "(option on)", None),
    ("GPU: same, B16, train", GPU_C64 + ["data.batch_size=16", "bench.steps=3"], "", None),
    ("GPU: dsprites_easy as trained (64px 8x8, glimpse 16, T10, B8)",
     GPU + EASY + ["execution.fixed_slots=false", "bench.steps=5"], "", None),
    ("GPU: same, fixed_slots=true", GPU + EASY + ["execution.fixed_slots=true", "bench.steps=5"], "(option on)", None),
    ("GPU: 128px 8x8, 45 obj, glimpse 64, T10, B1, track (fresh weights)",
     GPU_C64 + ["data.batch_size=1", "bench.mode=track", "bench.steps=3"], "(every slot present)", None),
    ("GPU: dsprites_crowded track (128px 8x8, 60 obj, glimpse 16), T10, B1, its trained checkpoint",
     GPU + CROWDED_TRACK + ["execution.fixed_slots=false", CROWDED_CKPT], "", None),
]
SUITES = {False: (CASES, "benchmarks.json", "table"), True: (GPU_CASES, "benchmarks_gpu.json", "gpu-table")}


def newest_checkpoint(experiment: str, grid: int | None = None) -> Path | None:
    """The best checkpoint of the newest fit run of ``experiment`` under outputs/ (None if none); with ``grid``,
    the newest whose model has that many grid cells per side."""
    from scalor.launch import read_checkpoint  # memory-mapped: only the hyperparameters are read

    for path in sorted((ROOT / "outputs" / experiment).glob("*/checkpoints/best*.ckpt"), reverse=True):
        if grid is not None:
            model = (read_checkpoint(str(path)).get("hyper_parameters") or {}).get("model", {})
            if model.get("num_cell_h") != grid:
                continue
        return path.relative_to(ROOT)
    return None


def fail(message: str) -> None:
    """One error line on stderr, exit 2 (bad input: a revision, a case name, a checkpoint)."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def run_case(overrides: list[str], root: Path = ROOT) -> dict:
    """One ``python -m scalor.bench`` process in the source tree ``root``; its JSON result."""
    proc = subprocess.run([sys.executable, "-m", "scalor.bench", *overrides], cwd=root, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        fail(f"error: python -m scalor.bench {' '.join(overrides)} failed in {root}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def git(*args: str, cwd: Path = ROOT) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        fail(f"error: git {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """A temporary detached git worktree of ``rev`` (removed afterwards)."""
    path = Path(tempfile.mkdtemp(prefix="scalor-bench-")) / "tree"
    git("worktree", "add", "--detach", str(path), rev)
    try:
        yield path
    finally:
        git("worktree", "remove", "--force", str(path))


def this_tree() -> str:
    """This tree's commit, with "+changes" where it differs from it."""
    return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain", "--untracked-files=no")
                                                  else "")


def compare(rev: str, cases: list, rounds: int, out_json: Path) -> list[dict]:
    """Each case measured on commit ``rev`` (before) and on this tree (after), one after the other, ``rounds``
    times over; the results (one per case, round and tree) go to ``out_json`` as they come."""
    before = f"{git('rev-parse', '--short', rev)} (before)"
    after = f"{this_tree()} (after)"
    record = {"what": f"python scripts/benchmarks.py --against {rev}: python -m scalor.bench, one process per "
                      f"case, before and after alternating, {rounds} round(s)",
              "date": time.strftime("%Y-%m-%d"), "results": []}
    with worktree(rev) as old:
        for r in range(1, rounds + 1):
            for name, overrides in cases:
                for code, root in ((before, old), (after, ROOT)):
                    print(f"round {r}: {name}: {code}", flush=True)
                    result = run_case(overrides, root)
                    result.update(round=r, case=name, code=code, overrides=overrides)
                    record["results"].append(result)
                    out_json.write_text(json.dumps(record, indent=1))
    return record["results"]


def ab_table(results: list[dict]) -> str:
    """Before/after per case: median s/step of each round, the speed-up of the medians over the rounds and the
    peak RSS (the largest of the rounds)."""
    rows = ["| case | before s/step | after s/step | speed-up | peak RSS MB before -> after |", "|---|---|---|---|---|"]
    for case in dict.fromkeys(r["case"] for r in results):
        got = {kind: [r for r in results if r["case"] == case and r["code"].endswith(f"({kind})")]
               for kind in ("before", "after")}
        if not (got["before"] and got["after"]):
            continue
        times = {k: [r["median_step_s"] for r in v] for k, v in got.items()}
        rss = {k: max(r["peak_rss_mb"] for r in v) for k, v in got.items()}
        speed = statistics.median(times["before"]) / statistics.median(times["after"])
        rows.append(f"| {case} | {', '.join(f'{t:.2f}' for t in times['before'])} | "
                    f"{', '.join(f'{t:.2f}' for t in times['after'])} | {speed:.2f}x | "
                    f"{rss['before']:.0f} -> {rss['after']:.0f} |")
    return "\n".join(rows)


def table(results: list[dict], cases: list = CASES) -> str:
    """The Markdown table of ``results``; GPU results get their peak CUDA memory as a column."""
    gpu = any("peak_cuda_mb" in r for r in results)
    cuda_head, cuda_rule = (" peak CUDA MB |", "---|") if gpu else ("", "")
    rows = [f"| case | median s/step | min | max | frames/s | peak RSS MB |{cuda_head} mean count | target | met |",
            f"|---|---|---|---|---|---|{cuda_rule}---|---|---|"]
    checks = {name: check for name, _, _, check in cases}
    for r in results:
        check = checks.get(r["name"])
        met = "" if check is None else ("yes" if check(r) else "**no**")
        cuda = f" {r.get('peak_cuda_mb', '')} |" if gpu else ""
        rows.append(f"| {r['name']} | {r['median_step_s']} | {r['min_step_s']} | {r['max_step_s']} | "
                    f"{r['frames_per_s']} | {r['peak_rss_mb']} |{cuda} {r['mean_count']} | {r['target']} | {met} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", action="store_true",
                        help="only re-render the table from the suite's JSON (docs/benchmarks.json or, with --gpu, "
                             "docs/benchmarks_gpu.json)")
    parser.add_argument("--only", default=None, help="re-run only the cases whose name contains this text")
    parser.add_argument("--gpu", action="store_true",
                        help="the GPU suite (bench.device=cuda): docs/benchmarks_gpu.json and the GPU table")
    parser.add_argument("--crowded-ckpt", default=None, type=Path,
                        help="dsprites_crowded checkpoint (8x8 grid) for the track cases (default: the best checkpoint "
                             "of the newest 8x8 run in outputs/dsprites_crowded/)")
    parser.add_argument("--against", default=None, metavar="REV",
                        help="before/after: the cases (--only) on git commit REV and on this tree, alternating; "
                             "writes --ab-json and prints a table of both")
    parser.add_argument("--rounds", type=int, default=2, help="--against: how many times each pair runs")
    parser.add_argument("--ab-json", type=Path, default=DOCS / "benchmarks_ab.json", help="--against: the output")
    parser.add_argument("--extra", nargs="*", default=[], metavar="OVERRIDE",
                        help="overrides added to every case (e.g. bench.threads=1)")
    args = parser.parse_args()
    crowded = args.crowded_ckpt or newest_checkpoint("dsprites_crowded", CROWDED_GRID)
    cases, json_name, marker = SUITES[args.gpu]
    if crowded is not None:
        crowded = crowded if crowded.is_absolute() else ROOT / crowded  # also valid from a worktree
    if args.extra:
        cases = [(name, overrides + args.extra, target, check) for name, overrides, target, check in cases]
    if args.against is not None:
        if args.rounds < 1:
            fail("error: --rounds must be at least 1.")
        chosen = [(name, overrides) for name, overrides, _, _ in cases if args.only is None or args.only in name]
        if not chosen:
            fail(f"error: no case name contains {args.only!r}; see CASES in scripts/benchmarks.py.")
        if any(CROWDED_CKPT in o for _, o in chosen) and crowded is None:
            fail("error: a chosen case needs a dsprites_crowded checkpoint: pass --crowded-ckpt PATH.")
        chosen = [(n, [f"bench.ckpt_path={crowded}" if o == CROWDED_CKPT else o for o in overrides])
                  for n, overrides in chosen]
        print(ab_table(compare(args.against, chosen, args.rounds, args.ab_json)))
        return
    out_json = DOCS / json_name
    if not args.table:
        old = {r["name"]: r for r in json.loads(out_json.read_text())} if out_json.exists() else {}
        results = []
        for name, overrides, target, _ in cases:
            if args.only is not None and args.only not in name and name in old:
                results.append({**old[name], "target": target})  # a kept measurement, the current target text
                continue
            if CROWDED_CKPT in overrides:
                if crowded is None:
                    fail(f"error: the case '{name}' needs a dsprites_crowded checkpoint of an 8x8 grid: train one "
                             "(python run.py experiment=dsprites_crowded grid=8x8) or pass --crowded-ckpt PATH, or "
                             "leave it out with --only.")
                overrides = [f"bench.ckpt_path={crowded}" if o == CROWDED_CKPT else o for o in overrides]
            print(f"running: {name}", flush=True)
            result = run_case(overrides)
            result.update(name=name, target=target, overrides=overrides)
            results.append(result)
            # after every case, the finished ones and the kept old ones: a stopped suite loses one case at most
            out_json.write_text(json.dumps(results + [r for n, r in old.items()
                                                      if n not in {x["name"] for x in results}], indent=1))
        out_json.write_text(json.dumps(results, indent=1))
    results = json.loads(out_json.read_text())
    md = DOCS / "benchmarks.md"
    text = md.read_text()
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    head, rest = text.split(start)
    _, tail = rest.split(end)
    md.write_text(f"{head}{start}\n{table(results, cases)}\n{end}{tail}")
    print(table(results, cases))


if __name__ == "__main__":
    main()
