"""The one entry point: `python run.py [group=option ...] [key=value ...]` (README "Command line").

A thin shell around scalor.tasks.run: user errors (ScalorError) print one line `error: <message>` on stderr,
without a traceback, and exit with code 2.
"""

import os
import sys

# Idle OpenMP threads sleep instead of spinning: on a busy or shared CPU spinning threads slow training
# tens of times. Set before torch is imported; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from scalor.errors import ScalorError  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from scalor.tasks import run

    try:
        return run(cfg)
    except ScalorError as err:
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # the other jobs go on; a sweeper sees a failed trial
            print(f"error: job {HydraConfig.get().job.num}: {err}", file=sys.stderr, flush=True)
            return float("nan")
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
