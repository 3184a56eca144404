"""The model's options, and the model configs that older checkpoints saved.

:class:`SCALORConfig` is the one source of the model options (``model.*``): their types, their defaults, what
each does and the checks of their values. Hydra composes conf/model against it (:func:`register_schema`), so a
value of the wrong type fails as the config is composed; a key that is no option is one error line from
:func:`check_overrides` (the command line) or the config check (an experiment file). conf/model/scalor.yaml only
adds the ``_target_`` and the options that come from other groups (the image size, the grid).

Older checkpoints' model configs: options that no longer exist, run options that moved to the ``execution``
group (:class:`scalor.model.execution.ExecutionOptions`), and options of how a trained model tracks, tests and
generates that moved out of the model (the ``tracker`` group, ``nll_samples``, ``observe_frames``).
Every path that reads a checkpoint's ``hyper_parameters['model']`` (``scalor.inference.load_model``, the
checkpoint-vs-config check of ``scalor.tasks.check_config``, ``SCALORLitModule`` as ``load_from_checkpoint``
rebuilds it) passes it through :func:`upgrade_saved_config` first. The history of each removed option is in
docs/tuning.md.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import ValidationError

from ..errors import ConfigError
from ..typecheck import accepts, expected
from .execution import ExecutionOptions

GLIMPSE_SIZES = (16, 32, 64)
BG_DECODERS = ("upsample", "sbd")
BOX_SOURCES = ("mask", "where")


def _pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


@dataclass(frozen=True)
class SCALORConfig:
    """The model options, each with its default (docs/model.md §1.1 says what each does to the model). Building
    one checks the values: a ConfigError of one line names the key, the value and the fix. The image size and the
    grid are set by the data and grid groups (conf/model/scalor.yaml interpolates them)."""

    img_size: int = 128
    """Side H of the square frames, px: a power of two >= 32."""
    num_cell_h: int = 8
    """Rows of the discovery grid: a power of two >= 2, at most img_size / 2."""
    num_cell_w: int = 8
    """Columns of the discovery grid: a power of two >= 2, at most img_size / 2."""
    glimpse_size: int = 64
    """Side S of each object's glimpse, px: 16, 32 or 64."""
    max_num_obj: int = 45
    """Cap on tracked objects per sequence, in every mode; the most present cells are kept by a stable rank."""
    z_what_dim: int = 64
    """Size D of each object's appearance latent z_what (64 is the reference's)."""
    conv_lstm: bool = True
    """A 2-layer ConvLSTM over the per-frame CNN features."""
    bg_decoder: str = "upsample"
    """Background decoder: upsample, or sbd (spatial broadcast)."""
    no_background: bool = False
    """No background module: black frames, bg and KL_bg are 0."""
    sigma: float = 0.1
    """Std of the Gaussian pixel likelihood (a curriculum sigma schedule overrides it)."""
    size_anc: float = 0.1
    """Box size anchor: size s = size_anc + var_s * tanh(.), a fraction of the frame."""
    var_s: float = 0.03
    """Box size range around size_anc, in (0, size_anc)."""
    ratio_anc: float = 2.5
    """Box aspect anchor (height over width): r = ratio_anc + var_anc * tanh(.)."""
    var_anc: float = 0.5
    """Box aspect range around ratio_anc, in [0, ratio_anc)."""
    explained_ratio_threshold: float = 0.3
    """A proposal is rejected when this share of its mask is already drawn (by propagated objects)."""
    center_range: float = 1.0
    """A discovered box centre lies within this many cells of its cell's centre, in (0, 1]."""
    reject_duplicates: bool = False
    """Also reject a proposal whose mask more present proposals of the same frame explain (not in the reference)."""
    duplicate_min_iou: float = 0.0
    """With reject_duplicates: one stronger proposal alone must explain the mask, at >= this IoU (0: all together)."""
    z_pres_disc_threshold: float = 0.7
    """A discovered cell becomes tracked above this presence."""
    gen_disc_pres_probs: float = 0.1
    """Per-cell presence probability of discovery while generating."""
    box_source: str = "mask"
    """Reported boxes: mask (tight box of what an object draws, alpha > 0.5) or where (the glimpse box z_where)."""
    double_softplus_what_std: bool = True
    """Reference behaviour: the propagated z_what std is softplus'd twice, softplus(i*sigma_e + f*sigma_h) > ln 2."""
    kl_weight_pre_rejection: bool = True
    """Reference behaviour: discovery KLs are weighted by the presence before rejection and cap."""

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_mapping(cls, options: Mapping, source: str | None = None) -> SCALORConfig:
        """The config of a mapping of options (a config node, a checkpoint's saved model config): keys that start
        with ``_`` (Hydra's ``_target_``) are left out, an option it lacks takes its default, a key that is no
        option is a ConfigError (one line naming the key and the options; prefixed by ``source`` where given)."""
        values = {str(k): v for k, v in options.items() if not str(k).startswith("_")}
        unknown = [key for key in values if key not in cls.keys()]
        if unknown:
            message = not_an_option(unknown[0], values[unknown[0]])
            raise ConfigError(f"{source}: {message}" if source else message)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The options as a plain mapping (what a checkpoint saves, less the ``_target_``)."""
        return {key: getattr(self, key) for key in self.keys()}

    def validate(self) -> None:
        """Raise ConfigError, naming the key and the fix, for a value of the wrong type or settings the model
        cannot run (the run options of the execution group: :meth:`ExecutionOptions.validate`)."""
        for key, hint in typing.get_type_hints(type(self)).items():
            value = getattr(self, key)
            if accepts(value, hint) is False:
                raise ConfigError(wrong_type(key, value, hint))
        if self.box_source not in BOX_SOURCES:
            raise ConfigError(f"model.box_source={self.box_source} is unknown; use mask (tight boxes of what each "
                              "object draws) or where (the glimpse boxes z_where).")
        if not (0 < self.center_range <= 1):
            raise ConfigError(f"model.center_range={self.center_range} must be in (0, 1] (cells; 1 is the "
                              "reference's).")
        if not (0 <= self.duplicate_min_iou <= 1):
            raise ConfigError(f"model.duplicate_min_iou={self.duplicate_min_iou} must be in [0, 1] (0: off).")
        img = self.img_size
        if not (_pow2(img) and img >= 32):
            raise ConfigError(f"data.img_size={img} is not supported: use a power of two >= 32 (e.g. 64 or 128).")
        for key in ("num_cell_h", "num_cell_w"):
            g = getattr(self, key)
            if not (_pow2(g) and g >= 2):
                raise ConfigError(f"grid.{key}={g} is not supported: use a power of two >= 2 (e.g. grid=4x4 or "
                                  "8x8).")
        if img // max(self.num_cell_h, self.num_cell_w) < 2:
            raise ConfigError(f"grid {self.num_cell_h}x{self.num_cell_w} does not divide the feature map of a "
                              f"{img}px image: use a grid of at most {img // 2} cells per side or a larger "
                              "data.img_size.")
        if self.glimpse_size not in GLIMPSE_SIZES:
            raise ConfigError(f"model.glimpse_size={self.glimpse_size} is not supported: use one of "
                              f"{GLIMPSE_SIZES}.")
        if self.z_what_dim < 1:
            raise ConfigError(f"model.z_what_dim={self.z_what_dim} must be >= 1 (64 is the reference's).")
        if self.max_num_obj < 1:
            raise ConfigError(f"model.max_num_obj={self.max_num_obj} must be >= 1.")
        if self.bg_decoder not in BG_DECODERS:
            raise ConfigError(f"model.bg_decoder={self.bg_decoder!r} is unknown: use 'upsample' or 'sbd'.")
        if not self.sigma > 0:
            raise ConfigError(f"model.sigma={self.sigma} must be > 0 (the pixel likelihood's std, e.g. 0.1).")
        if not (0 < self.var_s < self.size_anc):
            raise ConfigError(f"model.var_s={self.var_s} must be in (0, model.size_anc={self.size_anc}) so boxes "
                              "keep a size.")
        if not (0 <= self.var_anc < self.ratio_anc):
            raise ConfigError(f"model.var_anc={self.var_anc} must be in [0, model.ratio_anc={self.ratio_anc}).")
        if not (0 < self.explained_ratio_threshold <= 1):
            raise ConfigError(f"model.explained_ratio_threshold={self.explained_ratio_threshold} must be in "
                              "(0, 1].")
        if not (0 <= self.z_pres_disc_threshold < 1):
            raise ConfigError(f"model.z_pres_disc_threshold={self.z_pres_disc_threshold} must be in [0, 1).")
        if not (0 < self.gen_disc_pres_probs < 1):
            raise ConfigError(f"model.gen_disc_pres_probs={self.gen_disc_pres_probs} must be in (0, 1).")


def not_an_option(key: str, value: Any = None) -> str:
    """The one-line message for ``model.<key>`` (set to ``value``; None: not given), which is no option: where it
    went if it was one (:func:`retired`), else the options."""
    return retired(key, value) or f"model.{key} is not a model option; the options are {', '.join(SCALORConfig.keys())}."


def wrong_type(key: str, value: Any, hint: Any) -> str:
    """The one-line message for ``model.<key>`` set to ``value``, which its type ``hint`` does not take."""
    takes = expected(hint)
    return f"model.{key}={_show(value)} has the wrong type: it takes {takes}; set model.{key} to {takes}."


def schema() -> DictConfig:
    """conf/model's schema: the :class:`SCALORConfig` fields, typed, at their defaults, and a ``_target_`` for
    conf/model/scalor.yaml to set. Writable, as the yaml and the command line merge into it (a frozen dataclass's
    node is read-only). Not in struct mode: a key that is no option, set in an experiment file, reaches
    :func:`scalor.tasks.check_config`, whose error is one line (on the command line :func:`check_overrides` names
    it first)."""
    node = OmegaConf.structured(SCALORConfig)
    OmegaConf.set_readonly(node, False)
    OmegaConf.set_struct(node, False)
    with open_dict(node):
        node["_target_"] = MISSING
    return node


def register_schema() -> None:
    """Store :func:`schema` in Hydra's ConfigStore as ``model/scalor_schema``, the first entry of the defaults
    list of conf/model/scalor.yaml; called as ``scalor`` is imported, so before anything composes conf/."""
    ConfigStore.instance().store(group="model", name="scalor_schema", node=schema())


def check_overrides(overrides: Sequence[str]) -> None:
    """Raise ConfigError (one line) for the first command-line override ``model.<key>=<value>`` that would not
    compose, where Hydra would stop with several lines: a key that is no option, or a value (each choice of a
    sweep) that the option's type does not take. Other overrides, and those Hydra cannot parse, are Hydra's."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep

    parser, hints, node = OverridesParser.create(), typing.get_type_hints(SCALORConfig), schema()
    for text in overrides:
        if not text.lstrip("+~").startswith("model."):
            continue
        try:
            (override,) = parser.parse_overrides([text])
        except Exception:  # noqa: BLE001 - malformed: Hydra says how
            continue
        key = override.key_or_group.removeprefix("model.")
        if override.is_delete() or key.startswith("_"):  # _target_
            continue
        if key not in hints:
            raise ConfigError(not_an_option(key, text.partition("=")[2] or None))
        value = override.value()
        if isinstance(value, ChoiceSweep):
            choices = value.list
        else:  # a range or interval sweep gives numbers of its own
            choices = [] if override.is_sweep_override() else [value]
        for choice in choices:
            try:
                node[key] = choice
            except ValidationError:
                raise ConfigError(wrong_type(key, choice, hints[key])) from None


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


def retired(key: str, value: Any = None) -> str | None:
    """The one-line message for ``model.<key>`` set to ``value`` (None: not given, shown as N) where the key was a
    model option that moved to the execution group (:data:`MOVED_TO_EXECUTION`), out of the model
    (:data:`MOVED_OUT_OF_MODEL`) or was removed (:data:`REMOVED_OPTIONS`), naming what takes it over; else None."""
    if key in MOVED_TO_EXECUTION:
        return (f"model.{key} is now execution.{key} (how the model is run, not part of it); write "
                f"execution.{key}.")
    if key in MOVED_OUT_OF_MODEL:
        shown = "N" if value is None else _show(value)
        return (f"model.{key} is no longer a model option (it only chose how a trained model is run); "
                + MOVED_OUT_OF_MODEL[key].format(value=shown) + ".")
    if key in REMOVED_OPTIONS:
        return f"model.{key} no longer exists (it was removed; docs/tuning.md says why); drop it."
    return None


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
