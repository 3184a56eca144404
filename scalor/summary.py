"""The machine-readable record of a run: ``<run folder>/summary.json``.

Written by rank zero at the end of ``task=fit`` and ``task=test`` (scalor.tasks), read by
``scripts/results.py``. It holds what a results table needs and nothing that the logs do not: the command
that made the run, the hardware it ran on, the wall time, the optimiser steps, the tracker whose tracks the
metrics score and the final metrics.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

SUMMARY_FILE = "summary.json"


def command_line() -> str:
    """``python run.py <overrides>`` as the user typed it (Hydra's task overrides), else ``sys.argv``."""
    if HydraConfig.initialized():
        overrides = list(HydraConfig.get().overrides.task)
        return " ".join(["python run.py", *overrides])
    return " ".join(["python", *sys.argv])


def hardware() -> str:
    """E.g. ``2 CPU cores (Intel Xeon ...), 2 torch threads`` or ``1x NVIDIA H100 80GB HBM3``."""
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return ", ".join(f"{names.count(n)}x {n}" for n in dict.fromkeys(names))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threads = torch.get_num_threads()
    return f"{cores} CPU cores ({model}), {threads} torch thread{'' if threads == 1 else 's'}"


def write_summary(cfg: DictConfig, task: str, seconds: float, steps: Optional[int], metrics: dict[str, Any],
                  checkpoint: Optional[str] = None, tracker: Optional[str] = None) -> Path:
    """Write ``summary.json`` into the run folder (atomically) and return its path. ``tracker``: what reported
    the tracks that the metrics score (a tracker's label, e.g. ``online`` or ``pick8``)."""
    out = Path(str(cfg.paths.output_dir))
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "name": str(cfg.name),
        "task": task,
        "command": command_line(),
        "hardware": hardware(),
        "wall_seconds": round(float(seconds), 1),
        "steps": steps,
        "checkpoint": checkpoint,
        "tracker": tracker,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "metrics": {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                    for k, v in metrics.items() if isinstance(v, (int, float))},
    }
    path = out / SUMMARY_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_summary(run_dir: Path) -> dict:
    """The summary.json of a run folder."""
    return json.loads((Path(run_dir) / SUMMARY_FILE).read_text())
