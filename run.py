"""The one entry point: `python run.py [group=option ...] [key=value ...]` (README "Command line").

A thin shell around scalor.tasks.run: user errors (ScalorError) print one line `error: <message>` on stderr,
without a traceback, and exit with code 2. In a multirun such a job prints `error: job <n>: <message>` and the
other jobs go on; when the jobs ran in this process the sweep ends with a line naming the failed jobs and exit
code 1 (an Optuna search records them as failed trials and exits 0).
"""

import math
import os
import sys

# Idle OpenMP threads sleep instead of spinning: on a busy or shared CPU spinning threads slow training
# tens of times. Set before torch is imported; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# wandb's own banner and notices stay off the console (the run's summary names its wandb folder); WANDB_SILENT=false
# brings them back.
os.environ.setdefault("WANDB_SILENT", "true")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from scalor.errors import ScalorError  # noqa: E402  (importing scalor registers the ${scalor.*} resolvers)

# Multirun jobs run in this process (the default launcher): how many, which failed, and whether Optuna drives them.
JOBS: dict = {"run": 0, "failed": [], "optuna": False}


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from scalor.tasks import run

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        try:
            return run(cfg)
        except ScalorError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(2)

    JOBS["run"] += 1
    JOBS["optuna"] = "optuna" in str(hc.sweeper.get("_target_", ""))
    try:
        value = run(cfg)
    except ScalorError as err:  # the other jobs go on
        print(f"error: job {hc.job.num}: {err}", file=sys.stderr, flush=True)
        JOBS["failed"].append(hc.job.num)
        return None  # Optuna records a failed trial (it would stop the whole search on NaN)
    if JOBS["optuna"] and (value is None or (isinstance(value, float) and math.isnan(value))):
        print(f"error: job {hc.job.num}: there is no finite {cfg.monitor.metric} to optimise ({value}), so the trial "
              "failed; make sure it validates at least once (e.g. trainer.max_steps of at least one epoch).",
              file=sys.stderr, flush=True)
        JOBS["failed"].append(hc.job.num)
        return None
    return value


def check_group_deletions(argv: list[str]) -> None:
    """``group=null`` is not how Hydra drops a default config group (it fails with a traceback): say what is."""
    conf = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")
    for arg in argv:
        group, _, value = arg.partition("=")
        name, _, package = group.partition("@")  # tracker@fit_val_tracker: the tracker group at fit_val_tracker
        if value in ("null", "None") and name.isidentifier() and (not package or package.isidentifier()) \
                and os.path.isdir(os.path.join(conf, name)):
            named = " (the run is then named after its data group)" if group == "experiment" else ""
            print(f"error: {arg} is not how a config group is dropped; write '~{group}'{named}.", file=sys.stderr,
                  flush=True)
            sys.exit(2)


def check_retired_options(argv: list[str]) -> None:
    """``fit_val_pick_views=N``, an option that became a tracker of its own: one line naming the new keys
    (``model.<key>`` of a retired model option: :func:`check_model_overrides`)."""
    for arg in argv:
        key, _, value = arg.lstrip("+~").partition("=")
        if key == "fit_val_pick_views":
            print(f"error: fit_val_pick_views is now a tracker of its own; write tracker@fit_val_tracker=pick "
                  f"fit_val_tracker.views={value or 'N'}.", file=sys.stderr, flush=True)
            sys.exit(2)


def check_model_overrides(argv: list[str]) -> None:
    """``model.<key>=<value>`` that conf/model's schema (scalor.model.SCALORConfig) rejects, a key that is no option
    (one that was, moved or removed: where it went) or a value of the wrong type: one line naming the key (Hydra
    alone would stop with several as it composes)."""
    from scalor.model.config import check_overrides

    try:
        check_overrides(argv)
    except ScalorError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    check_group_deletions(sys.argv[1:])
    check_retired_options(sys.argv[1:])
    check_model_overrides(sys.argv[1:])
    main()
    if JOBS["failed"]:
        failed = ", ".join(str(n) for n in JOBS["failed"])
        rest = "; the others finished" if len(JOBS["failed"]) < JOBS["run"] else ""
        print(f"error: {len(JOBS['failed'])} of {JOBS['run']} jobs failed (job {failed}: see the lines above){rest}.",
              file=sys.stderr, flush=True)
        if not JOBS["optuna"]:
            sys.exit(1)
