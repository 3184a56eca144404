"""``init_from=PATH``: start a fit from another run's trained weights; and the model weights of a checkpoint.

Every weight of the new model whose name and shape match one in the checkpoint's ``state_dict`` (the weights that
run evaluated with: the EMA average where it kept one) is copied; the others keep their initialisation. The run is
otherwise a fresh one: step 0, a new optimiser, its own curriculum. From a checkpoint of an easier experiment with
the same cell size in pixels and glimpse size (e.g. dsprites_easy's 8 px cells for dsprites_dense) the glimpse
encoder, the CNN trunk and most of discovery and propagation carry over; the ConvLSTM's per-cell peephole weights
(shaped by the grid) do not, nor, between frame sizes below and from 128 px, the first layers of the glimpse
decoder's and the discovery's heads (one more convolution from 128 px on).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from scalor.errors import ConfigError
from scalor.launch import read_checkpoint

MODEL_PREFIX = "model."  # SCALORLitModule keeps the network as ``self.model``


@dataclass(frozen=True)
class WarmStart:
    """What ``init_from`` copied: tensor names (without the ``model.`` prefix) and value counts."""

    path: str
    loaded: list[str]
    other_shape: list[str]     # in both, of different shapes: kept as initialised
    not_in_checkpoint: list[str]
    not_in_model: list[str]
    loaded_values: int
    total_values: int

    def line(self) -> str:
        """One line for the console, e.g. ``init_from=x.ckpt: 120 of 130 weight tensors (98% of the values) ...``."""
        kept = [f"{len(names)} {why}" for names, why in ((self.other_shape, "of another shape"),
                                                         (self.not_in_checkpoint, "not in it")) if names]
        total = len(self.loaded) + len(self.other_shape) + len(self.not_in_checkpoint)
        share = self.loaded_values / max(self.total_values, 1)
        return (f"init_from={self.path}: {len(self.loaded)} of {total} weight tensors loaded ({share:.0%} of the "
                "values)"
                + (f"; kept as initialised: {', '.join(kept)} ({_groups(self.other_shape + self.not_in_checkpoint)})"
                   if kept else ""))

    def save(self, folder: str | Path) -> Path:
        """Write the report as ``<folder>/init_from.json``."""
        path = Path(folder) / "init_from.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1))
        return path


def _groups(names: list[str]) -> str:
    """The modules the names belong to, e.g. ``image_encoder.cnn, background``."""
    return ", ".join(dict.fromkeys(name.rsplit(".", 2)[0] if name.count(".") >= 2 else name.rsplit(".", 1)[0]
                                   for name in names))


def model_weights(state_dict: Mapping) -> dict:
    """The SCALOR weights of a SCALORLitModule state dict: ``model.*`` keys, prefix (and torch.compile's
    ``_orig_mod.``) removed."""
    return {key[len(MODEL_PREFIX):].removeprefix("_orig_mod."): value
            for key, value in state_dict.items() if key.startswith(MODEL_PREFIX)}


def checkpoint_weights(path: str) -> dict:
    """The model's tensors of a ``python run.py`` checkpoint at ``path`` (names without ``model.``); ConfigError
    (one line) for a file that is missing, unreadable or holds no SCALOR weights."""
    if not Path(str(path)).expanduser().is_file():
        raise ConfigError(f"init_from={path} is not a file; pass a .ckpt written by `python run.py` (task=fit).")
    try:
        checkpoint = read_checkpoint(str(Path(str(path)).expanduser()))
    except Exception as err:  # noqa: BLE001 - any unreadable file is a user error here
        raise ConfigError(f"init_from={path} is not a readable checkpoint ({type(err).__name__}); pass a .ckpt "
                          "written by `python run.py` (task=fit).") from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
    weights = model_weights(state) if isinstance(state, Mapping) else {}
    if not weights:
        raise ConfigError(f"init_from={path} holds no SCALOR weights; pass a .ckpt written by `python run.py` "
                          "(task=fit).")
    return weights


def warm_start(model: nn.Module, path: str) -> WarmStart:
    """Copy into ``model`` every tensor of the checkpoint at ``path`` whose name and shape match (parameters and
    buffers); ConfigError where none does (the checkpoint is of another model)."""
    source = checkpoint_weights(path)
    target = model.state_dict()
    loaded = [name for name, value in target.items() if name in source and source[name].shape == value.shape]
    parameters = dict(model.named_parameters())
    if not any(name in parameters for name in loaded):
        raise ConfigError(f"init_from={path} shares no weight of the same name and shape with this model; pass a "
                          "checkpoint of a model with the same glimpse size and z_what_dim (e.g. an easier "
                          "experiment with the same cell size in pixels).")
    model.load_state_dict({name: source[name] for name in loaded}, strict=False)
    return WarmStart(
        path=str(path), loaded=loaded,
        other_shape=[name for name in target if name in source and name not in loaded],
        not_in_checkpoint=[name for name in target if name not in source],
        not_in_model=[name for name in source if name not in target],
        loaded_values=sum(target[name].numel() for name in loaded),
        total_values=sum(value.numel() for value in target.values()))
