"""How a built SCALOR is run (the ``execution`` config group, conf/execution/default.yaml): options that change
speed, memory or, for ``skip_glimpse_below``, an inference-only approximation, but not the network a checkpoint
holds. They are applied to a built model (:meth:`ExecutionOptions.apply`) and are never part of the model config
saved in a checkpoint; older checkpoints that saved them have them dropped on load
(:func:`scalor.model.config.upgrade_saved_config`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Union

import torch

from ..errors import ConfigError

if TYPE_CHECKING:
    from .scalor import SCALOR

CHECKPOINT_FROM = 32  # checkpoint_decoder/encoder=auto: recompute the glimpse networks from this glimpse size on


@dataclass
class ExecutionOptions:
    """The run options of a SCALOR (docs/model.md §8.4). Exact unless stated:

    checkpoint_decoder: recompute the glimpse decoder in backward instead of storing its activations (``auto``:
    on for glimpses of :data:`CHECKPOINT_FROM` px and more). checkpoint_encoder: the same for the glimpse encoder
    and its glimpse extraction. channels_last: NHWC weights for the glimpse encoder and decoder. fixed_slots:
    always max_num_obj object slots (static shapes, no host sync per frame; ``auto``: where the input is on a
    GPU). compile: torch.compile the glimpse encoder and decoder. skip_glimpse_below: inference only, an
    approximation: cells whose presence is below it are not encoded or decoded (0: off).
    """

    checkpoint_decoder: Union[bool, str] = "auto"
    checkpoint_encoder: Union[bool, str] = "auto"
    channels_last: bool = True
    fixed_slots: Union[bool, str] = "auto"
    compile: bool = False
    skip_glimpse_below: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Raise ConfigError (one line, naming ``execution.<key>`` and the fix) for values the model cannot run."""
        for key in ("checkpoint_decoder", "checkpoint_encoder"):
            value = getattr(self, key)
            if not (isinstance(value, bool) or value == "auto"):
                raise ConfigError(f"execution.{key}={value!r} must be true, false or auto (on for glimpses of "
                                  f"{CHECKPOINT_FROM} px and more).")
        if not (isinstance(self.fixed_slots, bool) or self.fixed_slots == "auto"):
            raise ConfigError(f"execution.fixed_slots={self.fixed_slots!r} must be true, false or auto (on where the "
                              "input is on a GPU).")
        for key in ("channels_last", "compile"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"execution.{key}={getattr(self, key)!r} must be true or false.")
        skip = self.skip_glimpse_below
        if isinstance(skip, bool) or not isinstance(skip, (int, float)) or not (0 <= skip <= 1):
            raise ConfigError(f"execution.skip_glimpse_below={skip!r} must be a presence in [0, 1] (0: every cell "
                              "is encoded and decoded).")

    @classmethod
    def from_config(cls, spec: ExecutionOptions | dict | None) -> ExecutionOptions:
        """Options from a config mapping (``_target_`` allowed, unknown keys a ConfigError), an instance or None
        (the defaults)."""
        if spec is None:
            return cls()
        if isinstance(spec, cls):
            return spec
        values = {str(k): v for k, v in dict(spec).items() if not str(k).startswith("_")}
        unknown = sorted(set(values) - set(cls.keys()))
        if unknown:
            raise ConfigError(f"execution.{unknown[0]} is not an execution option; use one of "
                              f"{', '.join(cls.keys())}.")
        return cls(**values)

    def apply(self, model: SCALOR) -> SCALOR:
        """Set these options on ``model`` (in place; returned), resolved: its ``checkpoint_decoder`` and
        ``checkpoint_encoder`` (booleans), ``fixed_slots`` (``auto`` is resolved per forward pass, by the input's
        device), ``skip_glimpse_below``, ``compile`` (the compiled networks are rebuilt at first use) and
        ``channels_last`` (the glimpse networks' weight layout). The model keeps nothing else of them.
        Weights and outputs are unchanged (up to float summation order; ``skip_glimpse_below`` approximates)."""
        self.validate()
        auto = model.glimpse_size >= CHECKPOINT_FROM
        model.checkpoint_decoder = auto if self.checkpoint_decoder == "auto" else self.checkpoint_decoder
        model.checkpoint_encoder = auto if self.checkpoint_encoder == "auto" else self.checkpoint_encoder
        model.fixed_slots = self.fixed_slots  # auto: resolved once per forward pass
        model.skip_glimpse_below = self.skip_glimpse_below
        model.compile = self.compile
        model._compiled = {}  # torch.compile'd glimpse networks, rebuilt at first use
        model.channels_last = self.channels_last
        # NHWC convolution weights: oneDNN/cuDNN pick their faster NHWC kernels (exact)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        for net in (model.glimpse_encoder, model.glimpse_decoder):
            net.to(memory_format=layout)
        return model


def execution_options(cfg) -> ExecutionOptions:
    """The run options of a composed config's ``execution`` node (conf/execution; the defaults where the config
    has no such group)."""
    from omegaconf import OmegaConf

    node = cfg.get("execution")
    return ExecutionOptions.from_config(None if node is None else OmegaConf.to_container(node, resolve=True))
