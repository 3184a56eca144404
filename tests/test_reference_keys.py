"""The reference-weights loader covers every configuration the reference builds (no fixture files needed).

:func:`reference_layout` writes down the reference implementation's parameter and buffer names and shapes for one
configuration, layer by layer, from the reference's module definitions (``nn.Sequential`` blocks of
conv -> [PixelShuffle] -> CELU -> GroupNorm, Linear stacks with activations in between, GRU/LSTM cells). It does not
look at our model, so it is an independent check of both the key map and our layer stacks. Its totals are checked
against the reference's published parameter counts (PUBLISHED_TOTALS, PUBLISHED_MODULES).
"""

from __future__ import annotations

import itertools
from math import prod

import pytest
import torch

from scalor.model import SCALOR
from scalor.model.reference import canonical_reference_key, load_reference_state_dict, map_reference_key

Shape = tuple[int, ...]


class _Layout:
    """Reference names -> shapes, split into parameters and buffers."""

    def __init__(self) -> None:
        self.params: dict[str, Shape] = {}
        self.buffers: dict[str, Shape] = {}

    def conv(self, name: str, cin: int, cout: int, k: int, bias: bool = True) -> None:
        self.params[f"{name}.weight"] = (cout, cin, k, k)
        if bias:
            self.params[f"{name}.bias"] = (cout,)

    def linear(self, name: str, fin: int, fout: int) -> None:
        self.params[f"{name}.weight"] = (fout, fin)
        self.params[f"{name}.bias"] = (fout,)

    def rnn_cell(self, name: str, fin: int, hid: int, gates: int) -> None:
        """nn.GRUCell (gates=3) or nn.LSTMCell (gates=4)."""
        self.params.update({f"{name}.weight_ih": (gates * hid, fin), f"{name}.weight_hh": (gates * hid, hid),
                            f"{name}.bias_ih": (gates * hid,), f"{name}.bias_hh": (gates * hid,)})

    def seq(self, prefix: str, layers: list[tuple]) -> None:
        """One nn.Sequential, from compact layer specs:

        ("cg", cin, cout, k): conv, CELU, GroupNorm (3 indices); ("ps", cin, cout, k, r): conv to cout*r*r channels,
        PixelShuffle(r), CELU, GroupNorm(cout) (4 indices); ("conv", cin, cout, k): a bare conv; ("lin", fin, fout):
        a Linear; ("act",): an activation without parameters.
        """
        i = 0
        for kind, *a in layers:
            if kind == "cg":
                self.conv(f"{prefix}.{i}", a[0], a[1], a[2])
                self.params[f"{prefix}.{i + 2}.weight"] = self.params[f"{prefix}.{i + 2}.bias"] = (a[1],)
                i += 3
            elif kind == "ps":
                self.conv(f"{prefix}.{i}", a[0], a[1] * a[3] ** 2, a[2])
                self.params[f"{prefix}.{i + 3}.weight"] = self.params[f"{prefix}.{i + 3}.bias"] = (a[1],)
                i += 4
            elif kind == "conv":
                self.conv(f"{prefix}.{i}", *a)
                i += 1
            elif kind == "lin":
                self.linear(f"{prefix}.{i}", *a)
                i += 1
            else:
                i += 1


def _cg(cin, cout, k):
    return ("cg", cin, cout, k)


def _ps(cin, cout, r):
    return ("ps", cin, cout, 1, r)


def reference_layout(img: int = 128, grid: int = 8, glimpse: int = 64, conv_lstm: bool = True,
                     bg: str = "upsample") -> _Layout:
    """The reference's state-dict names and shapes for (image side, square grid, glimpse side, ConvLSTM, background
    decoder "upsample" | "sbd" | "none"), with the shared glimpse networks under their first names only."""
    L = _Layout()
    L.buffers.update({"z_pres_disc_threshold": (), "prior_bg_mean_t1": (1,), "prior_bg_std_t1": (1,),
                      "color_t": (700, 3)})

    # image encoder: per-frame CNN (trunk, lateral, fusion), optionally followed by a 2-layer ConvLSTM
    trunk = [_cg(3, 16, 4), _cg(16, 16, 3), _cg(16, 32, 4), _cg(32, 32, 3), _cg(32, 64, 4), _cg(64, 64, 3)]
    trunk += {(128, 8): [_cg(64, 128, 4), _cg(128, 64, 1)],
              (128, 4): [_cg(64, 64, 4), _cg(64, 64, 3), _cg(64, 128, 4), _cg(128, 64, 1)],
              (64, 8): [_cg(64, 64, 1)],
              (64, 4): [_cg(64, 64, 4), _cg(64, 64, 1)]}[img, grid]
    cnn = "image_enc.image_enc" if conv_lstm else "image_enc"
    L.seq(f"{cnn}.enc", trunk)
    L.seq(f"{cnn}.enc_lat", [_cg(64, 64, 3), _cg(64, 64, 3)])
    L.seq(f"{cnn}.enc_cat", [_cg(128, 64, 3)])
    if conv_lstm:
        for c in range(2):
            cell = f"image_enc.conv_lstm.cell_list.{c}"
            L.params.update({f"{cell}.W{g}": (1, 64, grid, grid) for g in ("ci", "cf", "co")})
            L.buffers.update({f"{cell}.h_0": (1, 64, 1, 1), f"{cell}.c_0": (1, 64, 1, 1)})
            L.conv(f"{cell}.conv_x", 64, 256, 3)
            L.conv(f"{cell}.conv_h", 64, 256, 3, bias=False)

    # glimpse encoder and decoder (shared by discovery and propagation)
    if glimpse == 64:
        L.seq("z_what_net.enc_cnn", [_cg(3, 16, 4), _cg(16, 32, 4), _cg(32, 64, 4), _cg(64, 128, 4),
                                     _cg(128, 128, 4)])
        L.seq("glimpse_dec_net.dec", [_cg(64, 128, 1), _ps(128, 64, 4), _cg(64, 64, 3), _ps(64, 64, 4),
                                      _cg(64, 64, 3), _ps(64, 32, 2), _cg(32, 32, 3), _ps(32, 16, 2)])
    else:
        L.seq("z_what_net.enc_cnn", [_cg(3, 16, 4), _cg(16, 32, 4), _cg(32, 64, 4), _cg(64, 64, 3),
                                     _cg(64, 128, 4)])
        L.seq("glimpse_dec_net.dec", [_cg(64, 128, 1), _ps(128, 64, 4), _ps(64, 64, 2), _ps(64, 32, 2),
                                      _ps(32, 16, 2), _cg(16, 16, 3)])
    L.linear("z_what_net.enc_what", 128, 128)
    for head, out in (("dec_o", 3), ("dec_alpha", 1)):
        if img == 128:
            L.seq(f"glimpse_dec_net.{head}", [_cg(16, 8, 3), ("conv", 8, out, 3)])
        else:
            L.conv(f"glimpse_dec_net.{head}", 16, out, 3)

    # propagation: attention encoder, tracker GRU, transition MLPs, per-object prior
    p = "propagate_cell"
    L.buffers[f"{p}.z_pres_stop_threshold"] = ()
    L.seq(f"{p}.attention_encoding.temporal_img_conv_net", [_cg(64, 64, 1)])
    L.linear(f"{p}.attention_encoding.temporal_img_enc_net", 64 * (grid // 2) ** 2, 128)
    L.linear(f"{p}.temporal_rnn_inp_net", 201, 128)
    L.rnn_cell(f"{p}.temporal_rnn.cell", 128, 128, 3)
    for name, fin, hid, fout in (("z_where_transit_bias_net", 328, 128, 8), ("z_depth_transit_net", 320, 128, 2),
                                 ("z_what_from_temporal_net", 128, 64, 128), ("z_what_gate_net", 256, 64, 2),
                                 ("z_pres_transit", 200, 64, 1)):
        L.seq(f"{p}.{name}", [("lin", fin, hid), ("act",), ("lin", hid, fout)])
    L.linear(f"{p}.prior_cell.prior_rnn_inp_net", 74, 128)
    L.rnn_cell(f"{p}.prior_cell.prior_rnn", 128, 64, 4)
    for name, fout in (("prior_what_net", 128), ("prior_where_bias_net", 8), ("prior_depth_net", 2),
                       ("prior_pres_net", 1)):
        L.linear(f"{p}.prior_cell.{name}", 64, fout)

    # background: encoder, decoder, GRU prior
    if bg != "none":
        n_down = {128: 5, 64: 4}[img]
        chans = [4, 16, 32, 64] + [64] * (n_down - 3)
        L.seq("bg_enc.enc", [_cg(a, b, 4) for a, b in zip(chans, chans[1:])] + [("conv", 64, 20, 4)])
        if bg == "upsample":
            dec = {128: [_cg(10, 256, 1), _ps(256, 256, 4), _cg(256, 256, 3), _ps(256, 128, 4), _cg(128, 128, 3),
                         _ps(128, 64, 2), _cg(64, 64, 3), _ps(64, 16, 4), _cg(16, 16, 3)],
                   64: [_cg(10, 256, 1), _ps(256, 128, 4), _cg(128, 128, 3), _ps(128, 64, 4), _cg(64, 64, 3),
                        _ps(64, 16, 4), _cg(16, 16, 3)]}[img]
            L.seq("bg_dec.dec", dec)
            L.seq("bg_dec.bg_dec", [_cg(16, 16, 3), ("conv", 16, 3, 3)])
        else:
            blocks = {128: 3, 64: 2}[img]
            L.seq("bg_dec.dec", [_cg(12 if i == 0 else 64, 64, 5) for i in range(blocks)])
            L.conv("bg_dec.bg_dec", 64, 3, 3)
            L.buffers["bg_dec.position_embedding"] = (1, 2, img, img)
        L.rnn_cell("bg_prior_rnn", 10, 32, 3)
        L.linear("bg_prior_net", 32, 20)

    # discovery: proposal network (alpha-mask encoder, fusion, heads) and its prior buffers
    d = "proposal_rejection_cell"
    L.buffers.update({f"{d}.prior_{v}_{s}": (1,) for v in ("what", "bg", "depth") for s in ("mean", "std")})
    L.buffers.update({f"{d}.prior_where_mean": (4, 1, 1), f"{d}.prior_where_std": (4, 1, 1),
                      f"{d}.prior_z_pres_prob": (), f"{d}.num_cell": (), f"{d}.ProposalNet.offset": (2, grid, grid)})
    mask = [_cg(1, 16, 4), _cg(16, 32, 4), _cg(32, 32, 3), _cg(32, 64, 4), _cg(64, 64, 3)]
    mask += {(128, 8): [_cg(64, 64, 4)],
             (128, 4): [_cg(64, 64, 4), _cg(64, 64, 3), _cg(64, 64, 4)],
             (64, 8): [],
             (64, 4): [_cg(64, 64, 4)]}[img, grid]
    L.seq(f"{d}.ProposalNet.mask_enc_net", mask + [_cg(64, 32, 1)])
    L.seq(f"{d}.ProposalNet.img_mask_cat_enc", [_cg(96, 64, 1), _cg(64, 64, 1)])
    for name, hid, out in (("z_where_net", 64, 8), ("z_pres_net", 64, 1), ("z_depth_net", 32, 2)):
        if img == 128:
            L.seq(f"{d}.ProposalNet.{name}", [_cg(64, hid, 1), ("conv", hid, out, 1)])
        else:
            L.conv(f"{d}.ProposalNet.{name}", 64, out, 1)
    return L


# The reference's published parameter counts (shared modules counted once), keyed like CONFIGS.
PUBLISHED_TOTALS = {
    (128, 8, 64, True, "upsample"): 5_000_002,
    (128, 8, 64, False, "upsample"): 4_385_090,
    (128, 8, 64, True, "sbd"): 2_812_754,
    (128, 8, 32, True, "upsample"): 4_643_538,
    (64, 8, 64, True, "upsample"): 3_175_570,
    (64, 4, 64, True, "upsample"): 3_190_290,
    (128, 8, 64, True, "none"): 2_387_287,
}
# Per-module counts, by reference prefix, for the configurations where they are published.
PUBLISHED_MODULES = {
    (128, 8, 64, True, "upsample"): {
        "image_enc.image_enc.": 378_656, "image_enc.conv_lstm.": 614_912, "z_what_net.": 452_560,
        "glimpse_dec_net.": 304_084, "bg_enc.": 194_276, "bg_dec.": 2_413_555, "bg_prior_rnn.": 4_224,
        "bg_prior_net.": 660, "proposal_rejection_cell.ProposalNet.mask_enc_net.": 155_792,
        "proposal_rejection_cell.ProposalNet.img_mask_cat_enc.": 10_624,
        "proposal_rejection_cell.ProposalNet.z_where_net.": 4_808,
        "proposal_rejection_cell.ProposalNet.z_pres_net.": 4_353,
        "proposal_rejection_cell.ProposalNet.z_depth_net.": 2_210, "proposal_rejection_cell.": 177_787,
        "propagate_cell.attention_encoding.": 135_488, "propagate_cell.temporal_rnn_inp_net.": 25_856,
        "propagate_cell.temporal_rnn.": 99_072, "propagate_cell.z_where_transit_bias_net.": 43_144,
        "propagate_cell.z_depth_transit_net.": 41_346, "propagate_cell.z_what_from_temporal_net.": 16_576,
        "propagate_cell.z_what_gate_net.": 16_578, "propagate_cell.z_pres_transit.": 12_929,
        "propagate_cell.prior_cell.": 68_299, "propagate_cell.": 459_288,
    },
    (128, 8, 64, True, "sbd"): {"bg_dec.": 226_307},
    (128, 8, 32, True, "upsample"): {"z_what_net.": 227_088, "glimpse_dec_net.": 173_092},
}

# Every configuration the reference builds: image side, grid, glimpse side, ConvLSTM, background decoder.
CONFIGS = list(itertools.product((64, 128), (4, 8), (32, 64), (True, False), ("upsample", "sbd", "none")))


def _cfg_id(cfg) -> str:
    img, grid, glimpse, lstm, bg = cfg
    return f"{img}px-{grid}x{grid}-g{glimpse}-{'lstm' if lstm else 'cnn'}-{bg}"


def _model(cfg) -> SCALOR:
    img, grid, glimpse, lstm, bg = cfg
    return SCALOR.from_config(img_size=img, num_cell_h=grid, num_cell_w=grid, glimpse_size=glimpse, max_num_obj=10,
                              conv_lstm=lstm, bg_decoder="upsample" if bg == "none" else bg, no_background=bg == "none")


def _numel(shapes) -> int:
    return sum(prod(s) for s in shapes)


def _coords(img: int) -> torch.Tensor:
    """The reference's SBD position embedding: an "ij" meshgrid of linspace(-1, 1) (rows, then columns)."""
    lin = torch.linspace(-1, 1, img)
    return torch.stack(torch.meshgrid(lin, lin, indexing="ij"))[None]


def _reference_weights(layout: _Layout, img: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the reference's names (buffers too; the SBD grid holds its true values)."""
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=g) for k, s in {**layout.buffers, **layout.params}.items()}
    if "bg_dec.position_embedding" in state:
        state["bg_dec.position_embedding"] = _coords(img)
    return state


def _raw_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` as the reference's training script saves it: DataParallel wrappers add ``module.`` after five
    submodules, and the shared glimpse networks also appear under propagate_cell and proposal_rejection_cell."""
    wrapped = ("image_enc.", "propagate_cell.", "bg_enc.", "bg_dec.", "proposal_rejection_cell.")
    raw = {}
    for k, v in state.items():
        top = next((w for w in wrapped if k.startswith(w)), None)
        raw[k if top is None else f"{top}module.{k[len(top):]}"] = v
    for k, v in state.items():
        if k.startswith("z_what_net."):
            raw[f"propagate_cell.module.{k}"] = raw[f"proposal_rejection_cell.module.{k}"] = v
        elif k.startswith("glimpse_dec_net."):
            raw[f"propagate_cell.module.{k}"] = v
            raw[f"proposal_rejection_cell.module.glimpse_dec.{k[len('glimpse_dec_net.'):]}"] = v
    return raw


@pytest.mark.parametrize("cfg", list(PUBLISHED_MODULES), ids=_cfg_id)
def test_layout_matches_published_counts(cfg):
    """The hand-written reference layout reproduces the reference's published per-module parameter counts."""
    layout = reference_layout(*cfg)
    for prefix, count in PUBLISHED_MODULES[cfg].items():
        assert _numel(s for k, s in layout.params.items() if k.startswith(prefix)) == count, prefix


@pytest.mark.parametrize("cfg", CONFIGS, ids=_cfg_id)
def test_key_map_covers_reference(cfg):
    """Each reference name maps onto one of our tensors of the same shape, parameters onto parameters, and together
    they cover all our parameters exactly once; only constant buffers are skipped."""
    layout = reference_layout(*cfg)
    model = _model(cfg)
    params = {k: tuple(v.shape) for k, v in model.named_parameters()}
    buffers = {k: tuple(v.shape) for k, v in model.named_buffers()}
    names = set(params) | set(buffers)
    covered: dict[str, str] = {}
    for key, shape in layout.params.items():
        ours = map_reference_key(key, names)
        assert ours in params, f"parameter {key} -> {ours}"
        assert params[ours] == shape, f"{key} -> {ours}: {shape} != {params[ours]}"
        assert ours not in covered, f"{key} and {covered.get(ours)} both map to {ours}"
        covered[ours] = key
    for key, shape in layout.buffers.items():
        ours = map_reference_key(key, names)
        assert ours is None or buffers.get(ours) == shape, f"buffer {key} -> {ours}"
    assert set(covered) == set(params), f"not covered: {sorted(set(params) - set(covered))[:5]}"
    total = _numel(layout.params.values())
    assert total == _numel(params.values())
    if cfg in PUBLISHED_TOTALS:
        assert total == PUBLISHED_TOTALS[cfg]


@pytest.mark.parametrize("cfg", CONFIGS, ids=_cfg_id)
def test_round_trip(cfg):
    """Random weights under the reference's names load into our model and equal it, tensor for tensor."""
    layout = reference_layout(*cfg)
    state = _reference_weights(layout, cfg[0])
    model = _model(cfg)
    load_reference_state_dict(model, state)
    names = set(model.state_dict()) | {k for k, _ in model.named_buffers()}
    ours = dict(model.named_parameters())
    for key in layout.params:
        torch.testing.assert_close(ours[map_reference_key(key, names)].detach(), state[key], rtol=0, atol=0)


@pytest.mark.parametrize("cfg", [(128, 8, 64, True, "upsample"), (64, 4, 64, False, "sbd")], ids=_cfg_id)
def test_raw_reference_checkpoint(cfg):
    """A state dict as the reference's training script saves it (DataParallel prefixes, shared modules three times)
    loads like the deduplicated one."""
    layout = reference_layout(*cfg)
    state = _reference_weights(layout, cfg[0])
    raw = _raw_checkpoint(state)
    assert all(canonical_reference_key(k) in state for k in raw)
    a, b = _model(cfg), _model(cfg)
    load_reference_state_dict(a, state)
    load_reference_state_dict(b, raw)
    for (k, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(x, y), k
    # copies of a shared module must agree
    raw["propagate_cell.module.z_what_net.enc_what.bias"] = raw["propagate_cell.module.z_what_net.enc_what.bias"] + 1
    with pytest.raises(ValueError, match="copies of one shared module"):
        load_reference_state_dict(_model(cfg), raw)


def test_errors_name_the_key():
    """Unknown keys, keys of another configuration and a wrong SBD grid are reported, never silently dropped."""
    cfg = (64, 4, 64, True, "sbd")
    state = _reference_weights(reference_layout(*cfg), 64)
    with pytest.raises(KeyError, match="'image_enc.something.weight' has no mapping"):
        load_reference_state_dict(_model(cfg), {**state, "image_enc.something.weight": torch.zeros(1)})
    # ConvLSTM weights into a model without the ConvLSTM
    with pytest.raises(KeyError, match="image_enc.conv_lstm.cell_list.0"):
        load_reference_state_dict(_model((64, 4, 64, False, "sbd")), state)
    # SBD weights into a model with the upsampling decoder
    with pytest.raises((KeyError, ValueError), match="bg_dec"):
        load_reference_state_dict(_model((64, 4, 64, True, "upsample")), state)
    # weights of a model without background leave our background decoder uncovered
    no_bg = _reference_weights(reference_layout(64, 4, 64, True, "none"), 64)
    with pytest.raises(KeyError, match="background"):
        load_reference_state_dict(_model(cfg), no_bg)
    # the SBD coordinate grid is compared with ours
    flipped = {**state, "bg_dec.position_embedding": state["bg_dec.position_embedding"].flip(1)}
    with pytest.raises(ValueError, match="position_embedding"):
        load_reference_state_dict(_model(cfg), flipped)
