"""Load the reference implementation's weights (JindongJiang/SCALOR parameter names) into :class:`SCALOR`.

Every configuration the reference can build is mapped; build our model with the same settings:

* image encoder with the ConvLSTM (``model.conv_lstm=true``): the reference names the per-frame CNN
  ``image_enc.image_enc.{enc,enc_lat,enc_cat}.*`` and the two ConvLSTM cells ``image_enc.conv_lstm.cell_list.{0,1}.*``
  (peepholes ``Wci``/``Wcf``/``Wco``); without it (``model.conv_lstm=false``) the CNN alone is ``image_enc.{enc,
  enc_lat,enc_cat}.*``;
* upsampling background decoder (``model.bg_decoder=upsample``): ``bg_dec.dec.*`` and the two-conv head
  ``bg_dec.bg_dec.{0,3}.*``; spatial-broadcast decoder (``model.bg_decoder=sbd``): the full-resolution conv blocks
  ``bg_dec.dec.*``, its last convolution ``bg_dec.bg_dec.{weight,bias}`` (the last layer of our ``decoder.dec``)
  and the coordinate grid ``bg_dec.position_embedding``; no background (``model.no_background=true``): no ``bg_*``
  keys at all;
* 64 or 128 px images, 4x4 or 8x8 cells, 32 or 64 px glimpses. These change how many layers each block has and
  their shapes, not the names: every block keeps the reference's ``nn.Sequential`` order, so layer indices carry
  over unchanged and only module prefixes differ (:data:`KEY_MAP`).

A checkpoint saved by the reference's training script loads as it is: the ``.module.`` segments that
``nn.DataParallel`` inserts are dropped, and the shared glimpse encoder and decoder, which the reference saves three
times (at the top, under ``propagate_cell`` and under ``proposal_rejection_cell``), load once after checking that the
copies agree.

Reference buffers are never loaded. Those that are constants here (priors, thresholds, the colour table, the
ConvLSTM zero states, the discovery cell offsets) are skipped; the SBD coordinate grid is compared with ours, which
we compute from the image size, and a mismatch is an error. A reference key that maps to nothing, or to a tensor of
another shape, is an error too: it means the weights come from another configuration than the model.
"""

from __future__ import annotations

import re

import torch
from torch import nn

# (reference prefix, our prefix or prefixes tried in order), most specific first. "{last}" in our prefix stands
# for the last layer index of that nn.Sequential.
KEY_MAP = [
    # image encoder, with the ConvLSTM: the CNN sits one level deeper
    ("image_enc.image_enc.enc_lat.", "image_encoder.cnn.lateral."),
    ("image_enc.image_enc.enc_cat.", "image_encoder.cnn.fusion."),
    ("image_enc.image_enc.enc.", "image_encoder.cnn.trunk."),
    ("image_enc.conv_lstm.cell_list.", "image_encoder.cells."),
    # image encoder without the ConvLSTM: the CNN is image_enc itself
    ("image_enc.enc_lat.", "image_encoder.cnn.lateral."),
    ("image_enc.enc_cat.", "image_encoder.cnn.fusion."),
    ("image_enc.enc.", "image_encoder.cnn.trunk."),
    ("z_what_net.enc_cnn.", "glimpse_encoder.cnn."),
    ("z_what_net.enc_what.", "glimpse_encoder.head."),
    ("glimpse_dec_net.dec_o.", "glimpse_decoder.appearance."),
    ("glimpse_dec_net.dec_alpha.", "glimpse_decoder.alpha."),
    ("glimpse_dec_net.dec.", "glimpse_decoder.trunk."),
    ("propagate_cell.z_where_transit_bias_net.", "propagation.where_net."),
    ("propagate_cell.z_depth_transit_net.", "propagation.depth_net."),
    ("propagate_cell.z_what_from_temporal_net.", "propagation.what_net."),
    ("propagate_cell.z_what_gate_net.", "propagation.gate_net."),
    ("propagate_cell.z_pres_transit.", "propagation.pres_net."),
    ("propagate_cell.temporal_rnn_inp_net.", "propagation.rnn_input."),
    ("propagate_cell.temporal_rnn.cell.", "propagation.tracker."),
    ("propagate_cell.attention_encoding.temporal_img_conv_net.", "propagation.attention.conv."),
    ("propagate_cell.attention_encoding.temporal_img_enc_net.", "propagation.attention.linear."),
    ("propagate_cell.prior_cell.prior_rnn_inp_net.", "propagation.prior.input."),
    ("propagate_cell.prior_cell.prior_rnn.", "propagation.prior.rnn."),
    ("propagate_cell.prior_cell.prior_what_net.", "propagation.prior.what."),
    ("propagate_cell.prior_cell.prior_where_bias_net.", "propagation.prior.where_bias."),
    ("propagate_cell.prior_cell.prior_depth_net.", "propagation.prior.depth."),
    ("propagate_cell.prior_cell.prior_pres_net.", "propagation.prior.pres."),
    ("bg_enc.enc.", "background.encoder.enc."),
    # upsampling decoder: a separate two-conv head; SBD: one conv, which our decoder keeps as its last layer
    ("bg_dec.bg_dec.", ("background.decoder.head.", "background.decoder.dec.{last}.")),
    ("bg_dec.dec.", "background.decoder.dec."),
    # SBD only: the (1, 2, H, W) coordinate grid, a buffer on both sides (compared, not loaded)
    ("bg_dec.position_embedding", "background.decoder.coords"),
    ("bg_prior_rnn.", "background.prior_rnn."),
    ("bg_prior_net.", "background.prior_net."),
    ("proposal_rejection_cell.ProposalNet.mask_enc_net.", "discovery.proposal.mask_encoder."),
    ("proposal_rejection_cell.ProposalNet.img_mask_cat_enc.", "discovery.proposal.fusion."),
    ("proposal_rejection_cell.ProposalNet.z_where_net.", "discovery.proposal.where_head."),
    ("proposal_rejection_cell.ProposalNet.z_pres_net.", "discovery.proposal.pres_head."),
    ("proposal_rejection_cell.ProposalNet.z_depth_net.", "discovery.proposal.depth_head."),
]
# The reference's second and third names of the shared glimpse encoder and decoder -> the first one.
SHARED_COPIES = {
    "propagate_cell.z_what_net.": "z_what_net.",
    "propagate_cell.glimpse_dec_net.": "glimpse_dec_net.",
    "proposal_rejection_cell.z_what_net.": "z_what_net.",
    "proposal_rejection_cell.glimpse_dec.": "glimpse_dec_net.",
}
_PEEPHOLES = {"Wci": "peep_i", "Wcf": "peep_f", "Wco": "peep_o"}
_DATA_PARALLEL = re.compile(r"(^|\.)module\.")
_SKIP = re.compile(r"(^|\.)(h_0|c_0|offset|num_cell|color_t|z_pres_disc_threshold|z_pres_stop_threshold|"
                   r"prior_z_pres_prob|prior_\w+_(mean|std)(_t1)?)$")
_HINT = ("the weights were saved by a reference built with another configuration than this model "
         "(ConvLSTM on/off, background decoder, image size, grid or glimpse size)")


def canonical_reference_key(key: str) -> str:
    """A reference key without DataParallel's ``module.`` segments and with shared modules under their first name."""
    key = _DATA_PARALLEL.sub(r"\1", key)
    for copy, first in SHARED_COPIES.items():
        if key.startswith(copy):
            return first + key[len(copy):]
    return key


def _last_index(prefix: str, ours: set[str]) -> str:
    """The largest layer index directly under ``prefix`` among our names ('' when there is none)."""
    idx = [int(m.group(1)) for name in ours if (m := re.match(re.escape(prefix) + r"(\d+)\.", name))]
    return str(max(idx)) if idx else ""


def map_reference_key(key: str, ours: set[str]) -> str | None:
    """Our name (a parameter or buffer in ``ours``) for a reference key, or None for a skipped constant buffer."""
    key = canonical_reference_key(key)
    if _SKIP.search(key):
        return None
    for ref, targets in KEY_MAP:
        if not key.startswith(ref):
            continue
        rest = key[len(ref):]
        last = rest.rsplit(".", 1)[-1]
        if last in _PEEPHOLES:
            rest = rest[: len(rest) - len(last)] + _PEEPHOLES[last]
        tried = []
        for target in (targets,) if isinstance(targets, str) else targets:
            if "{last}" in target:
                head = target.split("{last}")[0]
                index = _last_index(head, ours)
                if not index:
                    continue
                target = target.format(last=index)
            # single-conv heads are one-element Sequentials here
            for name in (target + rest, target + "0." + rest):
                if name in ours:
                    return name
            tried.append(target + rest)
        raise KeyError(f"reference key {key!r} maps to {' or '.join(map(repr, tried))}, which the model does not "
                       f"have: {_HINT}")
    raise KeyError(f"reference key {key!r} has no mapping (not a SCALOR reference state dict, or {_HINT})")


def load_reference_state_dict(model: nn.Module, ref_state: dict, aliases: dict | None = None) -> None:
    """Copy the reference's tensors into ``model``; every parameter of ours must be covered.

    ``ref_state`` is the reference's ``state_dict()`` (raw, or with the shared modules' copies left out, in which case
    ``aliases`` may list the left-out names: they are ignored). Our buffers are constants derived from the config, so
    a reference tensor that maps to one is compared with it instead of loaded.
    """
    ours = model.state_dict()
    buffers = dict(model.named_buffers())  # also the non-persistent ones (coordinate grids)
    names = set(ours) | set(buffers)
    mapped: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    for key, value in ref_state.items():
        if aliases and key in aliases:
            continue
        name = map_reference_key(key, names)
        if name is None:
            continue
        target = buffers[name] if name in buffers else ours[name]
        if target.shape != value.shape:
            raise ValueError(f"reference key {key!r} -> {name!r}: shape {tuple(value.shape)} != "
                             f"{tuple(target.shape)}; {_HINT}")
        if name in buffers:
            if not torch.allclose(value.to(target), target, rtol=0, atol=1e-6):
                raise ValueError(f"reference buffer {key!r} differs from our constant {name!r}; the weights do not "
                                 f"come from a reference layout this loader knows")
            continue
        if name in mapped:
            if not torch.equal(value.to(mapped[name]), mapped[name]):
                raise ValueError(f"reference keys {source[name]!r} and {key!r} are copies of one shared module but "
                                 f"hold different values")
            continue
        mapped[name] = value
        source[name] = key
    missing = [k for k, _ in model.named_parameters() if k not in mapped]
    if missing:
        raise KeyError(f"parameters not covered by the reference state dict: {missing[:5]}"
                       f"{' ...' if len(missing) > 5 else ''} ({len(missing)} in all); {_HINT}")
    model.load_state_dict(mapped, strict=False)
