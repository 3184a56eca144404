"""Load the reference implementation's parameters (JindongJiang/SCALOR names) into :class:`SCALOR`.

Only module prefixes differ: every block keeps the reference's ``nn.Sequential`` order, so layer
indices carry over unchanged. Buffers that are constants here (priors, thresholds, the colour
table, ConvLSTM zero states) are skipped.
"""

from __future__ import annotations

import re

import torch
from torch import nn

# (reference prefix, our prefix), most specific first.
KEY_MAP = [
    ("image_enc.image_enc.enc_lat.", "image_encoder.cnn.lateral."),
    ("image_enc.image_enc.enc_cat.", "image_encoder.cnn.fusion."),
    ("image_enc.image_enc.enc.", "image_encoder.cnn.trunk."),
    ("image_enc.conv_lstm.cell_list.", "image_encoder.cells."),
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
    ("bg_dec.bg_dec.", "background.decoder.head."),
    ("bg_dec.dec.", "background.decoder.dec."),
    ("bg_prior_rnn.", "background.prior_rnn."),
    ("bg_prior_net.", "background.prior_net."),
    ("proposal_rejection_cell.ProposalNet.mask_enc_net.", "discovery.proposal.mask_encoder."),
    ("proposal_rejection_cell.ProposalNet.img_mask_cat_enc.", "discovery.proposal.fusion."),
    ("proposal_rejection_cell.ProposalNet.z_where_net.", "discovery.proposal.where_head."),
    ("proposal_rejection_cell.ProposalNet.z_pres_net.", "discovery.proposal.pres_head."),
    ("proposal_rejection_cell.ProposalNet.z_depth_net.", "discovery.proposal.depth_head."),
]
_PEEPHOLES = {"Wci": "peep_i", "Wcf": "peep_f", "Wco": "peep_o"}
_SKIP = re.compile(r"(^|\.)(h_0|c_0|offset|num_cell|color_t|z_pres_disc_threshold|z_pres_stop_threshold|"
                   r"prior_z_pres_prob|prior_\w+_(mean|std)(_t1)?)$")


def map_reference_key(key: str, ours: set[str]) -> str | None:
    """Our name for a reference parameter, or None for a skipped constant buffer."""
    if _SKIP.search(key):
        return None
    for ref, new in KEY_MAP:
        if key.startswith(ref):
            rest = key[len(ref):]
            rest = _PEEPHOLES.get(rest.split(".")[-1], None) and re.sub(
                r"W(ci|cf|co)$", lambda m: _PEEPHOLES["W" + m.group(1)], rest) or rest
            name = new + rest
            if name not in ours:  # single-conv heads are one-element Sequentials here
                name = new + "0." + rest
            if name not in ours:
                raise KeyError(f"reference key {key!r} maps to {name!r}, which the model does not have")
            return name
    raise KeyError(f"reference key {key!r} has no mapping")


def load_reference_state_dict(model: nn.Module, ref_state: dict, aliases: dict | None = None) -> None:
    """Copy the reference's tensors into ``model`` (every parameter of ours must be covered)."""
    ours = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in ref_state.items():
        if aliases and key in aliases:
            continue
        name = map_reference_key(key, set(ours))
        if name is None:
            continue
        if ours[name].shape != value.shape:
            raise ValueError(f"{key} -> {name}: shape {tuple(value.shape)} != {tuple(ours[name].shape)}")
        mapped[name] = value
    missing = [k for k, _ in model.named_parameters() if k not in mapped]
    if missing:
        raise KeyError(f"parameters not covered by the reference state dict: {missing[:5]}")
    model.load_state_dict(mapped, strict=False)
