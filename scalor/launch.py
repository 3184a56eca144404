"""How runs are launched: the config resolvers of the sweep and cluster configs, and DDP worker processes.

Resolvers (registered when ``scalor`` is imported, so before Hydra builds a sweeper or launcher):

- ``${scalor.tasks_per_node:${trainer.devices}}``: SLURM tasks per node = devices per node (a number);
- ``${scalor.gpus_per_node:${trainer.accelerator},${trainer.devices}}``: GPUs per node (0 for the CPU; a third
  argument ``true`` for submitit's local executor, where ``devices=auto`` means every GPU of this machine);
- ``${scalor.direction:${monitor.metric},${monitor.mode},${data._target_}}``: ``maximize`` / ``minimize`` for
  Optuna, the same choice ``run()`` makes (val/mota, max, where the data has ground truth, else val/neg_elbo, min);
- ``${scalor.wandb_mode:}``: ``WANDB_MODE`` if set, else ``online`` inside a wandb sweep agent, else ``offline``;
- ``${scalor.run_name:...}``: the run's name (``name``: output folders, wandb, ``ckpt_path=last``), see
  :func:`run_name`.

DDP: Lightning starts the other local ranks by running the script again with ``sys.argv``. In a multirun that
would start a whole new sweep in every worker (and under submitit ``sys.argv`` is not even ``run.py``), so
:func:`ddp_worker_command` builds the worker's command from the job's own overrides instead: the same single job,
in the job's folder, in run mode.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import ListConfig, OmegaConf

RUN_PY = Path(__file__).resolve().parents[1] / "run.py"
# Hydra overrides that belong to the sweep (or that the worker command sets itself), not to one job.
SWEEP_ONLY = ("hydra.mode", "hydra.run.", "hydra.sweep.", "hydra.sweeper", "hydra/sweeper", "hydra.launcher",
              "hydra/launcher", "hydra.job.name", "hydra.output_subdir")


# ======================================================================================= resolvers
# The metrics that monitor.mode=auto maximises (the others it minimises).
HIGHER_IS_BETTER = ("mota", "motp", "idf1", "idp", "idr", "precision", "recall", "count_acc", "log_like",
                    "mostly_tracked")


def _count(devices: Any) -> int | None:
    """trainer.devices as a number of devices per node, or None when it is not one (auto, -1, "0,1" ...)."""
    if isinstance(devices, (list, tuple, ListConfig)):
        return len(devices)
    if isinstance(devices, int) and devices >= 1:
        return devices
    text = str(devices).strip()
    if text.isdigit() and int(text) >= 1:
        return int(text)
    if "," in text and all(part.strip().isdigit() for part in text.split(",") if part.strip()):
        return len([part for part in text.split(",") if part.strip()])
    return None


def tasks_per_node(devices: Any) -> int:
    """SLURM tasks per node for ``trainer.devices`` (one task per device; Lightning reads the SLURM env)."""
    count = _count(devices)
    if count is None:
        raise ValueError(f"hydra/launcher=slurm needs trainer.devices as a number of devices per node, not "
                         f"{devices!r}: set trainer.devices=4 (for example)")
    return count


def gpus_per_node(accelerator: Any, devices: Any, local: Any = False) -> int:
    """GPUs per job: ``trainer.devices`` unless the trainer runs on the CPU. ``local`` (submitit's local
    executor, which hides every GPU it is not asked for): ``devices=auto`` or ``-1`` means all GPUs here."""
    if str(accelerator) == "cpu":
        return 0
    if str(local).lower() == "true" and _count(devices) is None:
        import torch

        return torch.cuda.device_count()
    return tasks_per_node(devices)


def monitor_choice(metric: str, mode: str, has_gt: bool) -> tuple[str, str]:
    """``monitor.metric`` / ``monitor.mode`` with ``auto`` filled in: val/mota (max) where the data has ground
    truth, else val/neg_elbo (min); an ``auto`` mode follows the metric. Shared with Optuna's direction."""
    metric, mode = str(metric), str(mode)
    if metric == "auto":
        metric = "val/mota" if has_gt else "val/neg_elbo"
    if mode == "auto":
        mode = "max" if metric.split("/")[-1] in HIGHER_IS_BETTER else "min"
    return metric, mode


def direction(metric: Any, mode: Any, data_target: Any = None) -> str:
    """Optuna's direction for the value ``run()`` returns (the choice of :func:`monitor_choice`)."""
    from hydra.utils import get_class

    has_gt = bool(getattr(get_class(str(data_target)), "has_ground_truth", False)) if data_target else False
    return "maximize" if monitor_choice(metric, mode, has_gt)[1] == "max" else "minimize"


def wandb_mode() -> str:
    """``WANDB_MODE`` if set; ``online`` in a run started by a wandb sweep agent; ``offline`` otherwise."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_SWEEP_ID") else "offline"


def run_name(experiment: Any, data: Any, overrides: Any, task: Any = "fit", ckpt_path: Any = None) -> str:
    """The run's name: the experiment, or the data group where there is none (``~experiment``) or where the
    command line chose the data but not the experiment (``python run.py data=video ...`` is named ``video``, not
    after the default experiment, and ``task=track ckpt_path=last data=video ...`` finds its newest checkpoint);
    ``task=track`` of a checkpoint file: the experiment that checkpoint was trained in."""
    if str(task) == "track" and ckpt_path not in (None, "", "last") and Path(str(ckpt_path)).is_file():
        saved = checkpoint_experiment(str(ckpt_path))
        if saved:
            return saved
    chosen = [str(o).lstrip("+~").split("=")[0] for o in (overrides or ())]
    if experiment in (None, "None", "null") or ("data" in chosen and "experiment" not in chosen):
        return str(data)
    return str(experiment)


@functools.lru_cache(maxsize=4)
def _read(path: str, mtime_ns: int) -> dict:
    import torch

    return torch.load(path, map_location="cpu", mmap=True, weights_only=False)


def read_checkpoint(path: str) -> dict:
    """A Lightning checkpoint read once per process (memory-mapped: tensors are paged in only when used; read again
    if the file changes), for the start-up checks that look into it: the run name, the config check, the wandb run
    to resume. Raises what ``torch.load`` raises for an unreadable file; callers must not modify the dict."""
    real = os.path.realpath(path)  # ./x.ckpt and x.ckpt are one file, read once
    return _read(real, Path(real).stat().st_mtime_ns)


def checkpoint_experiment(path: str) -> str | None:
    """The experiment a checkpoint of ``python run.py`` was trained in, or None where it does not say."""
    try:
        ckpt = read_checkpoint(path)
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the task's own checks
        return None
    name = (ckpt.get("hyper_parameters") or {}).get("experiment")
    if name:
        return str(name)
    run = Path(path).parent.parent  # older checkpoints: <output_root>/<name>/<run>/checkpoints/<file>.ckpt
    if Path(path).parent.name != "checkpoints" or not (run / ".hydra").is_dir():
        return None
    return run.parent.parent.name if run.parent.name.startswith("multirun_") else run.parent.name


def register_resolvers() -> None:
    """Register the ``scalor.*`` resolvers (idempotent)."""
    OmegaConf.register_new_resolver("scalor.tasks_per_node", tasks_per_node, replace=True)
    OmegaConf.register_new_resolver("scalor.gpus_per_node", gpus_per_node, replace=True)
    OmegaConf.register_new_resolver("scalor.direction", direction, replace=True)
    OmegaConf.register_new_resolver("scalor.wandb_mode", wandb_mode, replace=True)
    OmegaConf.register_new_resolver("scalor.run_name", run_name, replace=True)


# ======================================================================================= DDP workers
def ddp_worker_command(local_rank: int) -> tuple[list[str], str]:
    """(command, cwd) that starts local rank ``local_rank`` of the current Hydra job: ``run.py`` with the job's
    overrides (a multirun job's own values, no sweep), in the job's output folder, in run mode."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    command = [sys.executable, str(RUN_PY)]
    if hc.job.config_name and hc.job.config_name != "config":
        command.append(f"--config-name={hc.job.config_name}")
    for source in hc.runtime.config_sources:  # folders added with --config-dir
        if source.provider == "command-line" and source.schema == "file":
            command.append(f"--config-dir={source.path}")
    hydra_overrides = [o for o in hc.overrides.hydra if not o.lstrip("+~").startswith(SWEEP_ONLY)]
    command += [*hydra_overrides, *hc.overrides.task]
    command += [f'hydra.run.dir="{hc.runtime.output_dir}"', f"hydra.job.name=train_ddp_process_{local_rank}",
                "hydra.output_subdir=null", "hydra.mode=RUN"]
    return command, str(hc.runtime.cwd)


def use_job_command_for_ddp_workers() -> None:
    """Make Lightning's subprocess launcher start DDP workers with :func:`ddp_worker_command` (idempotent)."""
    from lightning.fabric.strategies.launchers import subprocess_script as fabric_launcher
    from lightning.pytorch.strategies.launchers import subprocess_script as pytorch_launcher

    for module in (fabric_launcher, pytorch_launcher):
        if hasattr(module, "_hydra_subprocess_cmd"):
            module._hydra_subprocess_cmd = ddp_worker_command
