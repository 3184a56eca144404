"""Model configs saved in older checkpoints: options that no longer exist, and run options that moved to the
``execution`` group (:class:`scalor.model.execution.ExecutionOptions`).

Every path that reads a checkpoint's ``hyper_parameters['model']`` (``scalor.inference.load_model``, the
checkpoint-vs-config check of ``scalor.tasks.check_config``, ``SCALORLitModule`` as ``load_from_checkpoint``
rebuilds it) passes it through :func:`upgrade_saved_config` first. The history of each removed option is in
docs/tuning.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .execution import ExecutionOptions

# Removed options and the value that meant "off" (the default they had): a checkpoint that saved this value ran
# the code that remains, so the key is dropped; any other value ran a code path that is gone.
REMOVED_OPTIONS: dict[str, Any] = {
    "reverse_init": False,
    "inference_duplicate_min_iou": None,
    "train_skip_glimpse_below": 0.0,
    "track_duplicate_iou": 0.0,
    "reject_min_iou": 0.0,
    "duplicate_ratio_threshold": None,
    "duplicate_copy_iou": 0.0,
}

# Run options that older checkpoints saved in the model config and that are now the execution group's
# (conf/execution/default.yaml): they never changed the weights, so they are dropped whatever their value (the
# run's execution.* options apply instead).
MOVED_TO_EXECUTION: tuple[str, ...] = ExecutionOptions.keys()


def _is_off(value: Any, off: Any) -> bool:
    if off is None or isinstance(off, bool):
        return value is off
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == off


def _show(value: Any) -> str:
    """A value as the config files write it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def upgrade_saved_config(saved: Mapping, source: str = "checkpoint") -> dict:
    """A checkpoint's saved model config without the removed options (:data:`REMOVED_OPTIONS`) that it saved at
    their "off" value and without the run options now in the execution group (:data:`MOVED_TO_EXECUTION`,
    whatever their value); a removed option saved with any other value raises ConfigError (one line; ``source``
    names the checkpoint in it). Other keys are returned as they are."""
    upgraded = {}
    for key, value in saved.items():
        if key in MOVED_TO_EXECUTION:
            continue
        if key in REMOVED_OPTIONS:
            if not _is_off(value, REMOVED_OPTIONS[key]):
                raise ConfigError(f"{source} trained with model.{key}={_show(value)}, an option that no longer "
                                  "exists; use an earlier version of scalor to evaluate it.")
            continue
        upgraded[key] = value
    return upgraded
