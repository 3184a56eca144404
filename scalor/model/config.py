"""Model configs saved in older checkpoints: options that no longer exist, run options that moved to the
``execution`` group (:class:`scalor.model.execution.ExecutionOptions`), and options of how a trained model tracks,
tests and generates that moved out of the model (the ``tracker`` group, ``nll_samples``, ``observe_frames``).

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

# Options of how a trained model was run to track, test or generate that older checkpoints saved in the model
# config, each with what takes it over ({value}: the value given): they never changed the weights, so they are
# dropped whatever their value (the run's tracker, nll_samples and observe_frames apply instead).
MOVED_OUT_OF_MODEL: dict[str, str] = {
    "backfill": "write tracker=backfill (tracker=pick backfills its passes too)",
    "backfill_copy_iou": "write tracker.copy_iou={value} (with tracker=backfill or tracker=pick)",
    "pick_direction": "write tracker=pick",
    "pick_views": "write tracker=pick tracker.views={value}",
    "deterministic": "trackers always track on posterior means (tracking_inference=deterministic); drop it",
    "nll_samples": "write nll_samples={value}",
    "observe_frames": "write observe_frames={value}",
}


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


def moved_out_of_model(key: str, value: Any = None) -> str:
    """The one-line message for ``model.<key>`` (a key of :data:`MOVED_OUT_OF_MODEL`) set to ``value`` (None:
    not given, shown as N)."""
    shown = "N" if value is None else _show(value)
    return (f"model.{key} is no longer a model option (it only chose how a trained model is run); "
            + MOVED_OUT_OF_MODEL[key].format(value=shown))


def upgrade_saved_config(saved: Mapping, source: str = "checkpoint") -> dict:
    """A checkpoint's saved model config without the removed options (:data:`REMOVED_OPTIONS`) that it saved at
    their "off" value and without the run options now in the execution group (:data:`MOVED_TO_EXECUTION`) or out
    of the model (:data:`MOVED_OUT_OF_MODEL`), whatever their value; a removed option saved with any other value
    raises ConfigError (one line; ``source`` names the checkpoint in it). Other keys are returned as they are."""
    upgraded = {}
    for key, value in saved.items():
        if key in MOVED_TO_EXECUTION or key in MOVED_OUT_OF_MODEL:
            continue
        if key in REMOVED_OPTIONS:
            if not _is_off(value, REMOVED_OPTIONS[key]):
                raise ConfigError(f"{source} trained with model.{key}={_show(value)}, an option that no longer "
                                  "exists; use an earlier version of scalor to evaluate it.")
            continue
        upgraded[key] = value
    return upgraded
