"""SCALOR model core: shapes, parameter counts, gradients, rendering, discovery, compaction, IDs."""

import dataclasses
import math

import pytest
import torch

from scalor.errors import ConfigError
from scalor.model import SCALOR, ExecutionOptions, SCALORConfig, Schedule
from scalor.model.discovery import Discovery, keep_most_present
from scalor.model.distributions import kl_bernoulli, kl_normal
from scalor.model.encoders import GlimpseDecoder, GlimpseEncoder
from scalor.model.render import (BoxCoder, extract, gather_windows, mask_boxes, render_full, render_windows,
                                 scatter_windows, window_masks, window_size)
from scalor.model.state import ObjectState

torch.set_num_threads(1)


def params(m):
    return sum(p.numel() for p in m.parameters())


def tiny(**kw):
    """A tiny SCALOR; the execution group's options among ``kw`` are applied to the built model."""
    base = dict(img_size=64, num_cell_h=4, num_cell_w=4, max_num_obj=6, glimpse_size=16)
    base.update(kw)
    run = {key: base.pop(key) for key in ExecutionOptions.keys() if key in base}
    return ExecutionOptions(**run).apply(SCALOR.from_config(**base))


@pytest.mark.parametrize("kw,expected", [
    ({}, 5_000_002),
    ({"conv_lstm": False}, 4_385_090),
    ({"bg_decoder": "sbd"}, 2_812_754),
    ({"glimpse_size": 32}, 4_643_538),
    ({"img_size": 64}, 3_175_570),
    ({"img_size": 64, "num_cell_h": 4, "num_cell_w": 4, "max_num_obj": 10}, 3_190_290),
    ({"no_background": True}, 2_387_287),
])
def test_parameter_counts_match_spec(kw, expected):
    assert params(SCALOR.from_config(**kw)) == expected


@pytest.mark.parametrize("kw", [
    dict(img_size=64, num_cell_h=4, num_cell_w=4),
    dict(img_size=64, num_cell_h=8, num_cell_w=8),
    dict(img_size=64, num_cell_h=16, num_cell_w=16),
    dict(img_size=128, num_cell_h=4, num_cell_w=4),
    dict(img_size=128, num_cell_h=8, num_cell_w=8),
    dict(img_size=128, num_cell_h=16, num_cell_w=16),
    dict(img_size=128, num_cell_h=8, num_cell_w=4),
    dict(img_size=64, num_cell_h=2, num_cell_w=8),
    dict(img_size=64, num_cell_h=4, num_cell_w=4, glimpse_size=32),
    dict(img_size=64, num_cell_h=4, num_cell_w=4, glimpse_size=64),
    dict(img_size=64, num_cell_h=4, num_cell_w=4, conv_lstm=False),
    dict(img_size=64, num_cell_h=4, num_cell_w=4, bg_decoder="sbd"),
    dict(img_size=64, num_cell_h=4, num_cell_w=4, no_background=True),
    dict(img_size=64, num_cell_h=4, num_cell_w=4, max_num_obj=40),  # cap >= cells
    dict(img_size=64, num_cell_h=8, num_cell_w=8, z_what_dim=8),
])
def test_shapes_and_finiteness(kw):
    kw.setdefault("glimpse_size", 16)
    kw.setdefault("max_num_obj", 12)
    torch.manual_seed(0)
    m = SCALOR.from_config(**kw)
    h = kw["img_size"]
    out = m(torch.rand(2, 3, 3, h, h), Schedule())
    assert out.recon.shape == (2, 3, 3, h, h)
    for name in ("log_like", "kl_what", "kl_where", "kl_depth", "kl_pres", "kl_bg"):
        v = getattr(out, name)
        assert v.shape == (2,) and torch.isfinite(v).all(), name
    assert torch.isfinite(out.recon).all()
    n = out.boxes.shape[2]
    assert out.counts.shape == (2, 3) and out.ids.shape == (2, 3, n) and out.presence.shape == (2, 3, n)
    assert (out.counts <= kw["max_num_obj"]).all()
    assert ((out.ids >= 0).sum(-1) == out.counts).all()


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    m = tiny()
    # Undetached state so the propagation prior's inputs carry gradients too.
    out = m(torch.rand(2, 3, 3, 64, 64), Schedule(detach=False))
    out.neg_elbo.mean().backward()
    dead = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, dead


def test_z_what_dim_sizes_every_appearance_layer_and_carries_over_frames():
    torch.manual_seed(0)
    m = tiny(z_what_dim=8)
    assert m.glimpse_encoder.head.out_features == 16 and m.glimpse_decoder.trunk[0].in_channels == 8
    assert params(m) < params(tiny())
    out = m(torch.rand(2, 4, 3, 64, 64), Schedule(detach=False))
    assert out.carry.objects.z_what.shape[-1] == 8
    out.neg_elbo.mean().backward()
    dead = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, dead


def test_kl_terms_match_torch_distributions():
    from torch.distributions import Bernoulli, Normal, kl_divergence
    g = torch.Generator().manual_seed(0)
    mq, sq, mp, sp = torch.randn(4, 10, generator=g), torch.rand(4, 10, generator=g) + 0.1, \
        torch.randn(4, 10, generator=g), torch.rand(4, 10, generator=g) + 0.1
    torch.testing.assert_close(kl_normal(mq, sq, mp, sp), kl_divergence(Normal(mq, sq), Normal(mp, sp)))
    logit, p = torch.randn(50, generator=g) * 3, torch.rand(50, generator=g) * 0.98 + 0.01
    torch.testing.assert_close(kl_bernoulli(logit, p), kl_divergence(Bernoulli(logits=logit), Bernoulli(probs=p)),
                               rtol=1e-4, atol=1e-5)


def test_extract_then_render_round_trips_a_box():
    img = torch.zeros(1, 1, 64, 64)
    img[..., 20:36, 12:20] = 1.0  # an 8x16 px block
    box = torch.tensor([[[8 / 64, 16 / 64, (16 - 32) / 32, (28 - 32) / 32]]])  # sx, sy, tx, ty
    g = extract(img, box, (32, 32))
    assert g.mean() > 0.9  # the glimpse is filled by the block
    back = render_full(g, box, (64, 64))[:, 0]
    inner = back[..., 21:35, 13:19]
    assert torch.allclose(inner, torch.ones_like(inner), atol=1e-5)
    assert back.sum().item() == pytest.approx(img.sum().item(), rel=0.06)


def test_windowed_render_equals_full_canvas_oracle():
    torch.manual_seed(0)
    coder = BoxCoder()
    b, m, s, hw = 2, 7, 16, (64, 64)
    raw = torch.randn(b, m, 2) * 3
    sx, sy = coder.scale(raw[..., 0], raw[..., 1])
    centre = torch.rand(b, m, 2) * 2.3 - 1.15  # includes boxes crossing the border
    boxes = torch.cat([sx[..., None], sy[..., None], centre], -1)
    glimpses = torch.rand(b, m, 4, s, s)
    win_hw = window_size(*coder.max_scale, s, hw)
    win = render_windows(glimpses, boxes, win_hw, hw)
    full = render_full(glimpses, boxes, hw)
    weights = torch.rand(b, m, 1, 1, 1)
    torch.testing.assert_close(scatter_windows(win, win.data * weights, hw), (full * weights).sum(1),
                               atol=1e-5, rtol=1e-5)
    # Nothing is lost: every window pixel inside the image maps to its canvas pixel.
    canvas = torch.rand(b, 3, *hw)
    g = gather_windows(win, canvas, hw)
    assert (g[~win.valid[:, :, None].expand_as(g)] == 0).all()


@pytest.mark.parametrize("skip_below", [0.0, 1.0])
def test_proposal_covered_by_propagation_is_rejected_uncovered_accepted(skip_below):
    """Also when the cells are skipped (skip_below 1: none is encoded or decoded): their whole boxes are tested."""
    torch.manual_seed(0)
    coder = BoxCoder()
    s = 16
    disc = Discovery(64, 4, 4, coder, s, window_size(*coder.max_scale, s, (64, 64)), max_num_obj=100)
    enc, dec = GlimpseEncoder(s), GlimpseDecoder(s, 64)
    torch.nn.init.constant_(dec.alpha[0].bias, 5.0)  # opaque glimpses: every proposal has a mask
    feats = torch.randn(1, 64, 4, 4)
    frame = torch.rand(1, 3, 64, 64)
    covered = torch.zeros(1, 1, 64, 64)
    covered[..., :, :32] = 1.0  # left half explained by propagated objects
    def encode(frame, z_where, active=None):
        glimpses = extract(frame, z_where, (s, s)).flatten(0, 1)
        return enc(glimpses if active is None else glimpses[active])

    step = disc(feats, frame, covered, torch.zeros(1, dtype=torch.long), 0.1, 1.0, True, encode, dec.glimpse, True,
                skip_below=skip_below)
    sx, sy, tx, ty = step.z_where[0].unbind(-1)
    inside = (tx.abs() + sx < 1) & (ty.abs() + sy < 1)  # on screen, so the mask is not empty
    left = inside & (tx + sx * 1.1 < -0.05)  # box entirely in the left half
    right = inside & (tx - sx * 1.1 > 0.05)
    assert left.any() and right.any()
    assert not step.accept[0, left].any()
    assert step.accept[0, right].all()
    assert (step.z_pres[0, left] == 0).all()


def _dedup_case(min_iou=0.0, ratio=0.3):
    coder = BoxCoder(size_anc=0.2, var_s=0.05, ratio_anc=1.0, var_anc=0.5)  # windows hold boxes up to 0.35
    s = 16
    disc = Discovery(64, 4, 4, coder, s, window_size(*coder.max_scale, s, (64, 64)), max_num_obj=100,
                     explained_ratio_threshold=ratio, reject_duplicates=True, duplicate_min_iou=min_iou)
    return disc, s


def _masks(disc, s, z_where):
    glimpse = torch.ones(1, z_where.shape[1], 4, s, s)  # opaque: each mask is its whole box
    win = render_windows(glimpse, z_where, disc.win_hw, disc.img_hw)
    mask = (win.data[:, :, 3] > 0.3) & win.valid
    return win, mask, mask.flatten(2).sum(-1).float()


def test_duplicate_proposals_keep_only_the_most_present():
    disc, s = _dedup_case()
    z_where = torch.tensor([[0.1, 0.1, -0.5, -0.5], [0.1, 0.1, -0.5, -0.5],   # the same box twice
                            [0.1, 0.1, -0.45, -0.5],                          # nearly the same box
                            [0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, -0.5]])[None]  # two separate boxes
    win, mask, area = _masks(disc, s, z_where)
    strength = torch.tensor([[0.9, 0.95, 0.99, 0.5, 0.6]])
    dup = disc._duplicates(win, mask, area, None, strength)
    assert dup[0].tolist() == [True, True, False, False, False]  # covered by the stronger copy
    tie = disc._duplicates(win, mask, area, None, torch.ones(1, 5))
    assert not tie[0, 0] and tie[0, 1]  # ties: the earlier cell wins
    logits = disc._duplicates(win, mask, area, None, torch.ones(1, 5), torch.tensor([[20.0, 30.0, 25.0, 1.0, 1.0]]))
    assert logits[0].tolist() == [True, False, True, False, False]  # saturated alike: the larger logit wins


@pytest.mark.parametrize("min_iou,kept", [(0.0, False), (0.6, True)])
def test_duplicate_min_iou_keeps_an_object_inside_a_stronger_two_object_blob(min_iou, kept):
    disc, s = _dedup_case(min_iou)
    z_where = torch.tensor([[0.2, 0.1, -0.4, 0.0],    # a wide blob over two neighbours (the strongest)
                            [0.1, 0.1, -0.5, 0.0],    # its left half: one object
                            [0.1, 0.1, -0.5, 0.02],   # a near copy of that one (weaker)
                            [0.1, 0.1, 0.5, 0.5]])[None]  # a separate one
    win, mask, area = _masks(disc, s, z_where)
    dup = disc._duplicates(win, mask, area, window_masks(win, mask, (64, 64)).float(),
                           torch.tensor([[0.99, 0.9, 0.8, 0.7]]))
    assert not dup[0, 0] and not dup[0, 3]
    assert bool(dup[0, 1]) is not kept  # IoU with the blob about 0.5: a duplicate only by coverage
    assert dup[0, 2]  # IoU with the object it copies near 1: a duplicate either way


@pytest.mark.parametrize("min_iou", [0.0, 0.2])
@pytest.mark.parametrize("ratio,overlapping_kept", [(0.3, False), (0.8, True)])
def test_duplicate_share_is_explained_ratio_threshold(min_iou, ratio, overlapping_kept):
    """A duplicate is covered by at least explained_ratio_threshold of its mask, as a proposal propagated objects
    explain: a neighbour covered by half is one at 0.3 and stays at 0.8."""
    disc, s = _dedup_case(min_iou, ratio)
    z_where = torch.tensor([[0.1, 0.1, -0.5, 0.0],    # an object (the strongest)
                            [0.1, 0.1, -0.4, 0.0],    # a neighbour overlapping half of it
                            [0.1, 0.1, -0.49, 0.0]])[None]  # a near copy of the first
    win, mask, area = _masks(disc, s, z_where)
    full = window_masks(win, mask, (64, 64)).float() if min_iou else None
    dup = disc._duplicates(win, mask, area, full, torch.tensor([[0.99, 0.9, 0.8]]))
    assert not dup[0, 0] and dup[0, 2]  # a copy is covered beyond any threshold
    assert bool(dup[0, 1]) is not overlapping_kept


def _two_blobs_without_and_with_duplicate_rejection():
    """A video (2, 3, 3, 64, 64) of two blobs, and two fresh models with the same weights, without and with
    ``reject_duplicates``."""
    video = torch.zeros(2, 3, 3, 64, 64)
    video[:, :, :, 8:20, 8:20] = 1.0
    video[:, :, :, 40:52, 36:48] = 0.5
    torch.manual_seed(0)
    off = tiny(max_num_obj=16)
    on = tiny(max_num_obj=16, reject_duplicates=True)
    on.load_state_dict(off.state_dict())
    return video, off, on


def test_reject_duplicates_is_off_by_default_and_thins_out_overlapping_proposals():
    video, off, on = _two_blobs_without_and_with_duplicate_rejection()
    assert not off.discovery.reject_duplicates
    counts = []
    for m in (off, on):
        out = m(video, Schedule(), deterministic=True)
        assert torch.isfinite(out.neg_elbo).all()
        counts.append(out.counts[:, 0])
    # fresh weights draw a blob in every cell and neighbouring blobs overlap: with the option most cells go
    assert (counts[1] < counts[0]).all() and (counts[1] >= 1).all()


def test_training_can_stop_rejecting_duplicates_while_inference_keeps_it():
    """Schedule.reject_duplicates=False (curriculum.reject_duplicates_until) turns the duplicate test off in
    training only: the model then discovers as one without the option; in eval mode it still rejects."""
    video, off, on = _two_blobs_without_and_with_duplicate_rejection()

    def first_counts(m, training: bool, schedule: Schedule) -> torch.Tensor:
        m.train(training)
        with torch.no_grad():
            return m(video, schedule, deterministic=True).counts[:, 0]

    late = Schedule(reject_duplicates=False)
    assert (first_counts(on, True, Schedule()) < first_counts(off, True, Schedule())).all()
    assert torch.equal(first_counts(on, True, late), first_counts(off, True, late))
    assert torch.equal(first_counts(on, False, late), first_counts(on, False, Schedule()))
    assert (first_counts(on, False, late) < first_counts(off, False, late)).all()


@pytest.mark.parametrize("mode", ["train", "eval", "generate", "generate_t0"])
def test_cap_holds_in_every_mode(mode):
    torch.manual_seed(0)
    m = tiny(max_num_obj=3, gen_disc_pres_probs=0.9)
    m.train(mode == "train")
    with torch.no_grad():
        obs = {"generate": 2, "generate_t0": 0}.get(mode)
        out = m(torch.rand(2, 5, 3, 64, 64), Schedule(tau=0.5), observe_frames=obs)
    assert (out.counts <= 3).all()
    assert (out.counts == 3).any()  # the cap is reached, not trivially satisfied
    assert torch.isfinite(out.recon).all()


def test_ids_unique_and_never_reused_over_20_frames():
    torch.manual_seed(1)
    m = tiny(max_num_obj=5)
    torch.nn.init.constant_(m.propagation.pres_net[2].bias, -2.0)  # presence logits near 0: objects die
    with torch.no_grad():
        out = m(torch.rand(2, 20, 3, 64, 64), Schedule(tau=0.3))
    for b in range(2):
        seen_dead, alive_prev = set(), set()
        for t in range(20):
            ids = [int(i) for i in out.ids[b, t] if i >= 0]
            assert len(ids) == len(set(ids)), "duplicate ID in a frame"
            assert not (set(ids) & seen_dead), "a dead object's ID was reused"
            seen_dead |= alive_prev - set(ids)
            alive_prev = set(ids)
        assert len(seen_dead) > 0  # objects did die, so reuse was possible


def test_batched_compaction_equals_per_element_loop():
    torch.manual_seed(0)
    m = tiny(max_num_obj=8)
    with torch.no_grad():
        video = torch.rand(3, 2, 3, 64, 64)
        out1 = m(video[:, :1], Schedule(tau=0.5, detach=True))
        state = out1.carry.objects
        # One more frame by hand: propagation + discovery, then compact both ways.
        feats, _ = m.image_encoder(video[:, 1:2], out1.carry.lstm)
        prop = m.propagation(state, feats[:, 0], video[:, 1], 0.5, m._encode, m._decode, False)
        alpha = m._canvases(prop.windows, prop.z_pres, prop.z_depth).alpha.clamp(0, 1)
        disc = m.discovery(feats[:, 0], video[:, 1], alpha, state.mask.sum(1), 0.1, 0.5, True,
                           m._encode, m._decode, False)
        new, count, next_id, _, _ = m._compact(state, prop, disc, out1.carry.next_id, True)
    for b in range(3):
        rows = []
        for i in range(state.num_slots):
            if prop.z_pres[b, i] > 0:
                rows.append((prop.z_what[b, i], prop.z_where[b, i], int(state.ids[b, i])))
        nid = int(out1.carry.next_id[b])
        for k in range(disc.z_pres.shape[1]):
            if disc.z_pres[b, k] > m.z_pres_disc_threshold:
                rows.append((disc.z_what[b, k], disc.z_where[b, k], nid))
                nid += 1
        assert int(count[b]) == len(rows) and int(next_id[b]) == nid
        assert int(new.mask[b].sum()) == len(rows) and not new.mask[b, len(rows):].any()
        for j, (what, where, oid) in enumerate(rows):
            assert torch.equal(new.z_what[b, j], what) and torch.equal(new.z_where[b, j], where)
            assert int(new.ids[b, j]) == oid
    assert (count > 0).all()


def test_fresh_weights_saturate_the_cap_and_noise_likelihood():
    """docs/model.md §10: with fresh weights the count saturates at max_num_obj by t = 1-3, and the
    per-frame log-likelihood of uniform noise at 128 px is about -1.8e5."""
    torch.manual_seed(0)
    m = SCALOR.from_config(glimpse_size=16)
    with torch.no_grad():
        out = m(torch.rand(1, 4, 3, 128, 128), Schedule())
    assert 15 <= int(out.counts[0, 0]) <= 45
    assert int(out.counts[0, -1]) == 45
    assert -3.0e5 < float(out.log_like[0]) < -1.2e5


def test_bg_alpha_curriculum_removes_the_background():
    torch.manual_seed(0)
    m = tiny()
    with torch.no_grad():
        out = m(torch.rand(1, 2, 3, 64, 64), Schedule(bg_alpha_curriculum=True), visuals=True)
    assert torch.equal(out.visuals["alpha"], torch.ones_like(out.visuals["alpha"]))
    torch.testing.assert_close(out.recon, out.visuals["fg"])


def test_scheduled_sigma_is_the_likelihood_std():
    torch.manual_seed(0)
    m = tiny(sigma=0.1).eval()
    video = torch.rand(2, 3, 3, 64, 64)
    with torch.no_grad():
        const = m(video, Schedule(), deterministic=True)
        same = m(video, Schedule(sigma=0.1), deterministic=True)
        wider = m(video, Schedule(sigma=0.2), deterministic=True)
    torch.testing.assert_close(same.log_like, const.log_like)
    # log N(x; mu, s) = -(x - mu)^2 / (2 s^2) - log s - log(2 pi) / 2, summed over the same pixels and recon
    n = video[0, 0].numel()
    sq = -(const.log_like + n * (math.log(0.1) + 0.5 * math.log(2 * math.pi))) * 2 * 0.1 ** 2
    expected = -sq / (2 * 0.2 ** 2) - n * (math.log(0.2) + 0.5 * math.log(2 * math.pi))
    torch.testing.assert_close(wider.log_like, expected, rtol=1e-5, atol=1e-2)
    torch.testing.assert_close(wider.recon, const.recon)


@pytest.mark.parametrize("decoder", ["upsample", "sbd"])
def test_background_of_all_frames_at_once_equals_frame_by_frame(decoder):
    from scalor.model.background import Background
    torch.manual_seed(0)
    bgm = Background(32, decoder)
    frames, alpha = torch.rand(2, 4, 3, 32, 32), torch.rand(2, 4, 1, 32, 32, requires_grad=True)
    for z, h in ((None, None), (torch.randn(2, 10), torch.randn(2, 32))):  # a new sequence, a carried one
        steps, z_t, h_t = [], z, h
        for t in range(4):
            steps.append(bgm(frames[:, t], alpha[:, t], z_t, h_t, deterministic=True, log_imp=True))
            z_t, h_t = steps[-1].z_bg, steps[-1].h
        seen = bgm.observe(frames, alpha, z, h, deterministic=True, log_imp=True)
        for key in ("bg", "z_bg", "kl", "log_imp"):
            torch.testing.assert_close(getattr(seen, key), torch.stack([getattr(s, key) for s in steps], 1))
        torch.testing.assert_close(seen.h, h_t)
        grads = torch.autograd.grad(sum(s.bg.sum() + s.kl.sum() for s in steps), [alpha, *bgm.parameters()])
        grads_seen = torch.autograd.grad(seen.bg.sum() + seen.kl.sum(), [alpha, *bgm.parameters()])
        for g, g_seen in zip(grads, grads_seen):  # weight gradients: sums over 8 frames in another order
            assert float((g_seen - g).abs().max()) <= 1e-5 * float(g.abs().max()) + 1e-7
    mean = bgm.observe(frames, alpha, None, None, deterministic=True).z_bg
    sampled = bgm.observe(frames, alpha, None, None, deterministic=False)
    assert sampled.z_bg.shape == mean.shape and not torch.equal(sampled.z_bg, mean)
    assert torch.isfinite(sampled.kl).all() and torch.isfinite(sampled.bg).all()


def test_generation_writes_every_frame_and_t0_works():
    torch.manual_seed(0)
    m = tiny()
    m.eval()
    with torch.no_grad():
        cond = m(torch.rand(2, 6, 3, 64, 64), Schedule(), observe_frames=3)
        free = m(torch.zeros(2, 6, 3, 64, 64), Schedule(), observe_frames=0)
    for out in (cond, free):
        assert out.recon.shape == (2, 6, 3, 64, 64) and torch.isfinite(out.recon).all()
        assert (out.recon[:, 3:].flatten(2).std(-1) > 0).all()  # imagined frames are not blank


def test_deterministic_mode_is_reproducible_and_streaming_continues():
    m = tiny()
    video = torch.rand(1, 6, 3, 64, 64)
    with torch.no_grad():
        a = m(video, Schedule(), deterministic=True)
        b = m(video, Schedule(), deterministic=True)
        first = m(video[:, :3], Schedule(), deterministic=True)
        second = m(video[:, 3:], Schedule(), carry=first.carry, deterministic=True)
    torch.testing.assert_close(a.recon, b.recon)
    torch.testing.assert_close(torch.cat([first.recon, second.recon], 1), a.recon)
    assert torch.equal(torch.cat([first.counts, second.counts], 1), a.counts)
    n = a.ids.shape[-1]
    pad = lambda x: torch.cat([x, x.new_full((*x.shape[:2], n - x.shape[2]), -1)], -1)  # noqa: E731
    assert torch.equal(torch.cat([pad(first.ids), pad(second.ids)], 1), a.ids)


def test_importance_weighted_nll_is_finite():
    torch.manual_seed(0)
    m = tiny()
    m.eval()
    video = torch.rand(1, 2, 3, 64, 64)
    with torch.no_grad():
        nll = m.importance_nll(video, Schedule(), samples=3)
    assert nll.shape == (1,) and torch.isfinite(nll).all() and nll > 0


@pytest.mark.parametrize("kw,key", [
    (dict(num_cell_h=3), "num_cell_h"),
    (dict(img_size=64, num_cell_h=64, num_cell_w=64), "grid"),
    (dict(glimpse_size=48), "glimpse_size"),
    (dict(max_num_obj=0), "max_num_obj"),
    (dict(sigma=0.0), "sigma"),
    (dict(img_size=100), "img_size"),
    (dict(bg_decoder="conv"), "bg_decoder"),
    (dict(center_range=0.0), "center_range"),
    (dict(z_what_dim=0), "z_what_dim"),
    (dict(duplicate_min_iou=1.5), "duplicate_min_iou"),
])
def test_impossible_configs_raise_one_clear_error(kw, key):
    with pytest.raises(ConfigError, match=key) as err:
        SCALORConfig(**kw)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kw,message", [
    (dict(sigma="abc"), "model.sigma=abc has the wrong type: it takes a number; set model.sigma to a number."),
    (dict(conv_lstm="maybe"), "model.conv_lstm=maybe has the wrong type: it takes true or false"),
    (dict(max_num_obj=4.5), "model.max_num_obj=4.5 has the wrong type: it takes a whole number"),
    (dict(glimpse_size=True), "model.glimpse_size=true has the wrong type: it takes a whole number"),
])
def test_a_value_of_the_wrong_type_is_one_clear_error(kw, message):
    with pytest.raises(ConfigError) as err:
        SCALORConfig(**kw)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_the_model_is_built_from_its_config():
    """SCALOR takes a SCALORConfig (model.config); from_config builds one from a mapping of options, Hydra's
    _target_ left out, a missing option at its default, a key that is no option one error line naming it."""
    config = SCALORConfig(img_size=64, num_cell_h=4, num_cell_w=4, glimpse_size=16, max_num_obj=6, sigma=0.2)
    m = SCALOR(config)
    assert m.config is config and m.img_hw == (64, 64) and m.grid == (4, 4) and m.sigma == 0.2
    assert SCALOR.from_config({"_target_": "scalor.model.SCALOR", **config.to_dict()}).config == config
    assert SCALOR.from_config(config, sigma=0.3).config == SCALORConfig(**{**config.to_dict(), "sigma": 0.3})
    assert SCALORConfig.from_mapping({}) == SCALORConfig()
    with pytest.raises(ConfigError) as err:
        SCALORConfig.from_mapping({"img_size": 64, "foo": 1})
    assert str(err.value).startswith("model.foo is not a model option; the options are img_size, num_cell_h")
    assert "\n" not in str(err.value)
    with pytest.raises(TypeError, match="SCALORConfig"):
        SCALOR({"img_size": 64})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.sigma = 0.5


@pytest.mark.parametrize("kw,message", [
    (dict(skip_glimpse_below=-0.1), "execution.skip_glimpse_below=-0.1 must be a presence in [0, 1]"),
    (dict(skip_glimpse_below=True), "execution.skip_glimpse_below=True must be a presence"),
    (dict(checkpoint_decoder="yes"), "execution.checkpoint_decoder='yes' must be true, false or auto"),
    (dict(checkpoint_encoder=1), "execution.checkpoint_encoder=1 must be true, false or auto"),
    (dict(fixed_slots="gpu"), "execution.fixed_slots='gpu' must be true, false or auto"),
    (dict(channels_last="yes"), "execution.channels_last='yes' must be true or false"),
    (dict(compile=1), "execution.compile=1 must be true or false"),
])
def test_impossible_execution_options_raise_one_clear_error(kw, message):
    with pytest.raises(ConfigError) as err:
        ExecutionOptions(**kw)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="execution.nope is not an execution option"):
        ExecutionOptions.from_config({"_target_": "scalor.model.execution.ExecutionOptions", "nope": 1})


def test_run_options_are_not_model_options():
    """The execution group's options are applied to a built model, never passed to SCALOR: a model starts with
    the defaults, and applying other options and then the defaults again gives the default model back."""
    assert not set(ExecutionOptions.keys()) & set(SCALORConfig.keys())
    m = tiny()
    assert not hasattr(m, "execution")  # the model holds the options as resolved, nothing else
    assert (m.channels_last, m.fixed_slots, m.compile, m.skip_glimpse_below) == (True, "auto", False, 0.0)
    w = next(p for p in m.glimpse_decoder.parameters() if p.dim() == 4 and p.shape[-1] > 1)
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    ExecutionOptions(channels_last=False, checkpoint_decoder=True, fixed_slots=True, skip_glimpse_below=0.3).apply(m)
    w = next(p for p in m.glimpse_decoder.parameters() if p.dim() == 4 and p.shape[-1] > 1)
    assert w.is_contiguous() and m.checkpoint_decoder is True and m.fixed_slots is True
    ExecutionOptions().apply(m)
    w = next(p for p in m.glimpse_decoder.parameters() if p.dim() == 4 and p.shape[-1] > 1)
    assert w.is_contiguous(memory_format=torch.channels_last) and m.checkpoint_decoder is False
    assert (m.fixed_slots, m.skip_glimpse_below) == ("auto", 0.0)


@pytest.mark.parametrize("center_range", [1.0, 0.5])
def test_discovered_centres_stay_within_center_range_of_their_cell(center_range):
    model = SCALOR.from_config(img_size=64, num_cell_h=4, num_cell_w=4, glimpse_size=16, max_num_obj=4,
                               center_range=center_range)
    raw = torch.zeros(1, 16, 4)
    raw[..., 2:] = torch.tensor([-1e3, 1e3]).repeat(8)[None, :, None].reshape(1, 16, 1)  # saturated offsets
    box = model.discovery.decode_where(raw)
    cell = 2.0 / 4  # one cell in normalised units
    centre = model.discovery.cell_xy * cell + cell / 2 - 1  # (K, 2) cell centres
    offset = (box[0, :, 2:] - centre) / cell
    assert torch.allclose(offset.abs(), torch.full_like(offset, center_range), atol=1e-5)


def test_empty_state_has_no_valid_slots():
    s = ObjectState.empty(2, "cpu")
    assert s.num_slots == 1 and not s.mask.any() and s.lengths.tolist() == [0, 0]


def test_window_covers_largest_box():
    coder = BoxCoder()
    wh, ww = window_size(*coder.max_scale, 64, (128, 128))
    sx, sy = coder.max_scale
    assert ww >= sx * 128 + 2 and wh >= sy * 128 + 2
    assert math.isclose(sx * sy, (coder.size_anc + coder.var_s) ** 2 * math.sqrt(3.0 / 2.0), rel_tol=1e-6)


@pytest.mark.parametrize("option", [dict(checkpoint_decoder=True), dict(checkpoint_encoder=True),
                                    dict(channels_last=True)])
def test_speed_and_memory_options_give_the_same_loss_and_gradients(option):
    """Each exact option against the plain path (no checkpointing, NCHW weights)."""
    torch.manual_seed(0)
    video = torch.rand(1, 3, 3, 64, 64)
    plain = dict(checkpoint_decoder=False, checkpoint_encoder=False, channels_last=False)
    grads = []
    for flags in (plain, {**plain, **option}):
        torch.manual_seed(0)
        m = tiny(**flags)
        out = m(video, Schedule(detach=False), deterministic=True)
        out.neg_elbo.sum().backward()
        grads.append((out.neg_elbo.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-3)
    for name, g in grads[0][1].items():  # other kernels sum in another order: compare relative to the norm
        err = (g - grads[1][1][name]).norm() / (g.norm() + 1e-12)
        assert err < 1e-4, (name, float(err))


@pytest.mark.parametrize("checkpoint_decoder,img_size", [(False, 64), (True, 64), (False, 128)])
def test_decoding_only_the_surviving_proposals_with_gradients_gives_the_same_loss_and_gradients(checkpoint_decoder,
                                                                                               img_size):
    """Training decodes every proposal's alpha without gradients for the accept-reject test and only the survivors
    of rejection and the cap again, whole and with gradients; against decoding every proposal whole with gradients
    (the fixed-slots path). Image 128: the decoder's two-conv heads, the appearance head then not run at all."""
    torch.manual_seed(0)
    video = torch.rand(2, 3, 3, img_size, img_size)
    runs = []
    for static in (True, False):
        torch.manual_seed(0)
        m = tiny(max_num_obj=4, checkpoint_decoder=checkpoint_decoder, img_size=img_size)
        forward, decode, decoded = m.discovery.forward, m._decode, []
        m.discovery.forward = lambda *a, _static=static, **k: forward(*a, **{**k, "static": _static})
        m._decode = lambda z, mask_only=False: (decoded.append((z.shape[0], torch.is_grad_enabled(), mask_only))
                                                or decode(z, mask_only=mask_only))
        out = m(video, Schedule(detach=False), deterministic=True)
        out.neg_elbo.sum().backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        runs.append((out.neg_elbo.detach(), grads, decoded))
    (loss_all, grads_all, dec_all), (loss_kept, grads_kept, dec_kept) = runs
    cells = 2 * 16  # batch 2, a 4x4 grid
    with_grad = [n for n, grad, _ in dec_kept if grad]
    assert all(grad and not mask for _, grad, mask in dec_all)
    assert (cells, False, True) in dec_kept  # every proposal's alpha, without gradients
    assert all(not mask for _, grad, mask in dec_kept if grad)  # the survivors whole
    assert sum(with_grad) < sum(n for n, *_ in dec_all)  # fewer glimpses decoded with gradients
    assert max(n for n, *_ in dec_kept if n != cells) <= 2 * 4  # survivors: within the cap of 4 per sequence
    torch.testing.assert_close(loss_kept, loss_all, rtol=1e-6, atol=1e-3)
    assert grads_kept.keys() == grads_all.keys()
    for name, g in grads_all.items():  # batches of another size may sum in another order
        err = (g - grads_kept[name]).norm() / (g.norm() + 1e-12)
        assert err < 1e-5, (name, float(err))


@pytest.mark.parametrize("img_size", [64, 128])  # one-conv (stacked) and two-conv decoder heads
def test_mask_only_glimpse_is_the_glimpse_alpha_with_zero_colour(img_size):
    m = tiny(img_size=img_size)
    z = torch.randn(5, 64)
    with torch.no_grad():
        full, mask = m.glimpse_decoder.glimpse(z), m._decode(z, mask_only=True)
    assert mask.shape == full.shape and not mask[:, :3].any()
    torch.testing.assert_close(mask[:, 3:], full[:, 3:], rtol=1e-6, atol=1e-6)


def test_checkpointing_auto_is_on_from_32_px_glimpses():
    for size, on in ((16, False), (32, True), (64, True)):
        m = tiny(glimpse_size=size)
        assert m.checkpoint_decoder is on and m.checkpoint_encoder is on
    m = tiny(glimpse_size=16, checkpoint_decoder=True, checkpoint_encoder="auto")
    assert m.checkpoint_decoder is True and m.checkpoint_encoder is False


def test_bf16_autocast_stays_close_to_fp32():
    """trainer.precision=bf16-mixed (autocast): the loss within bf16's precision of the fp32 loss."""
    torch.manual_seed(1)
    video = torch.rand(1, 3, 3, 64, 64)
    torch.manual_seed(0)
    m = tiny()
    with torch.no_grad():
        ref = m(video, Schedule(), deterministic=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(video, Schedule(), deterministic=True)
    assert torch.isfinite(low.neg_elbo).all()
    torch.testing.assert_close(low.neg_elbo.float(), ref.neg_elbo, rtol=2e-2, atol=0)


@pytest.mark.slow
def test_compiled_glimpse_networks_give_the_same_loss_and_gradients():
    """execution.compile=true (torch.compile of the glimpse encoder and decoder) against eager."""
    torch.manual_seed(1)
    video = torch.rand(2, 3, 3, 64, 64)
    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        m = tiny(compile=flag)
        out = m(video, Schedule(detach=False), deterministic=True)
        out.neg_elbo.sum().backward()
        grads.append((out.neg_elbo.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-2)
    for name, g in grads[0][1].items():
        err = (g - grads[1][1][name]).norm() / (g.norm() + 1e-12)
        assert err < 1e-3, (name, float(err))


@pytest.mark.parametrize("img_size,glimpse_size", [(64, 32), (64, 16), (128, 64)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_decoder_heads_in_one_pass_equal_the_two_heads(img_size, glimpse_size, channels_last):
    """The glimpse decoder's colour and alpha (one stacked convolution for one-conv heads) and their gradients
    equal ``appearance`` and ``alpha`` applied one after the other."""
    torch.manual_seed(0)
    dec = GlimpseDecoder(glimpse_size, img_size)
    if channels_last:
        dec = dec.to(memory_format=torch.channels_last)
    z = torch.randn(5, 64)
    o, a = dec(z)
    (o.sum() + 2 * a.sum()).backward()
    fast = {n: p.grad.clone() for n, p in dec.named_parameters()}
    dec.zero_grad()
    x = dec.trunk(z[:, :, None, None])
    o2, a2 = torch.sigmoid(dec.appearance(x)), torch.sigmoid(dec.alpha(x))
    (o2.sum() + 2 * a2.sum()).backward()
    assert o.shape == (5, 3, glimpse_size, glimpse_size) and a.shape == (5, 1, glimpse_size, glimpse_size)
    torch.testing.assert_close(o, o2)
    torch.testing.assert_close(a, a2)
    for name, p in dec.named_parameters():
        torch.testing.assert_close(fast[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_channels_last_weights_load_into_either_layout():
    """Checkpoints move between channels_last and plain models (the layout is not part of the weights)."""
    torch.manual_seed(0)
    a, b = tiny(channels_last=True), tiny(channels_last=False)
    b.load_state_dict(a.state_dict())
    a.load_state_dict(b.state_dict())
    name, w = next((n, p) for n, p in a.glimpse_decoder.named_parameters() if p.dim() == 4 and p.shape[-1] > 1)
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    torch.testing.assert_close(w, b.glimpse_decoder.get_parameter(name))


def test_fixed_slot_budget_gives_the_same_loss_and_tracks():
    """fixed_slots pads the object state to max_num_obj: the padding is masked, so nothing changes. (Other batch
    sizes reorder float sums; on some inputs that flips a hard threshold, e.g. the 0.3 mask of the rejection.)"""
    torch.manual_seed(1)
    video = torch.rand(2, 4, 3, 64, 64)
    outs = []
    for fixed in (False, True):
        torch.manual_seed(0)
        m = tiny(fixed_slots=fixed, max_num_obj=20)
        out = m(video, Schedule(detach=False), deterministic=True)
        out.neg_elbo.sum().backward()
        outs.append((out, {n: p.grad.clone() for n, p in m.named_parameters()}))
    (dyn, g_dyn), (fix, g_fix) = outs
    assert fix.ids.shape[2] == 20 and dyn.ids.shape[2] <= 20
    # auto (the default) is the dynamic budget on a CPU: with a presence threshold few cells pass, it keeps
    # fewer slots than the 16 cells of the fixed budget
    slots = {}
    for fixed in ("auto", True):
        torch.manual_seed(0)
        m = tiny(fixed_slots=fixed, max_num_obj=20, z_pres_disc_threshold=0.99)
        slots[fixed] = m(video[:, :1], deterministic=True).ids.shape[2]
    assert slots["auto"] < slots[True] == 16
    torch.testing.assert_close(dyn.neg_elbo, fix.neg_elbo, rtol=1e-5, atol=1e-2)
    torch.testing.assert_close(dyn.counts, fix.counts)
    n = dyn.ids.shape[2]
    assert torch.equal(dyn.ids, fix.ids[:, :, :n]) and (fix.ids[:, :, n:] == -1).all()
    for name, g in g_dyn.items():
        err = (g - g_fix[name]).norm() / (g.norm() + 1e-12)
        assert err < 1e-4, (name, float(err))


def test_track_only_gives_the_same_tracks():
    torch.manual_seed(0)
    m = tiny()
    m.eval()
    video = torch.rand(2, 5, 3, 64, 64)
    with torch.no_grad():
        full = m(video, Schedule(), deterministic=True)
        fast = m(video, Schedule(), track_only=True, deterministic=True)
    assert torch.equal(full.ids, fast.ids) and torch.equal(full.counts, fast.counts)
    torch.testing.assert_close(full.boxes, fast.boxes)
    assert fast.recon.shape[1] == 0


def test_skipping_absent_cells_keeps_the_tracks_of_present_ones():
    """skip_glimpse_below is an approximation: cells below the threshold are dropped, the rest match."""
    torch.manual_seed(0)
    m = tiny(max_num_obj=8)
    m.eval()
    video = torch.rand(2, 5, 3, 64, 64)
    with torch.no_grad():
        exact = m(video, Schedule(), track_only=True, deterministic=True)
        m.skip_glimpse_below = 0.1
        approx = m(video, Schedule(), track_only=True, deterministic=True)
    # A tracked object needs presence > 0.7, far above the 0.1 skip threshold: same tracks.
    assert torch.equal(exact.counts, approx.counts) and torch.equal(exact.ids, approx.ids)
    torch.testing.assert_close(exact.boxes, approx.boxes)


def _decoded_glimpses(m, video, **kw):
    """(out, number of glimpses the decoder drew) of one training pass."""
    seen = []
    hook = m.glimpse_decoder.trunk.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    out = m(video, Schedule(detach=False), **kw)
    hook.remove()
    return out, sum(seen)


def test_skip_glimpse_below_acts_at_inference_only():
    """skip_glimpse_below: training encodes and decodes every cell (the exact loss); eval mode skips the cells
    below the threshold."""
    torch.manual_seed(0)
    video = torch.rand(2, 3, 3, 64, 64)
    m = tiny(skip_glimpse_below=0.5)
    torch.manual_seed(1)
    out, drawn = _decoded_glimpses(m, video)
    assert drawn >= 2 * 3 * 16  # every discovery cell of every frame, and the propagated objects
    m.eval()
    with torch.no_grad():
        _, drawn_eval = _decoded_glimpses(m, video, track_only=True)
    assert drawn_eval < 2 * 3 * 16


def test_cap_keeps_tied_saturated_cells_up_to_the_budget():
    """Presences saturated at exactly 1.0 tie; the cap must still keep max_num_obj of them."""
    torch.manual_seed(0)
    m = tiny(max_num_obj=5)
    torch.nn.init.constant_(m.discovery.proposal.pres_head[-1].bias, 50.0)
    with torch.no_grad():
        out = m(torch.rand(1, 2, 3, 64, 64), Schedule(tau=0.5))
    assert out.counts[0, 0] == 5


def test_cap_ranks_saturated_presences_by_their_logits():
    """Tied presences (several at exactly 1.0) are told apart by their logits, not kept in raster order; cells
    of presence 0 never take the budget's places."""
    z_pres = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 0.7], [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    assert torch.sigmoid(torch.tensor(20.0)) == torch.sigmoid(torch.tensor(40.0)) == 1.0  # float32 saturates
    rank_by = torch.tensor([[20.0, 35.0, 25.0, 40.0, 99.0, 0.8], [20.0, 20.0, 99.0, 99.0, 5.0, 5.0]])
    kept = keep_most_present(z_pres, rank_by, torch.tensor([2, 3]))
    assert kept.tolist() == [[False, True, False, True, False, False], [True, True, False, False, False, False]]
    assert keep_most_present(z_pres, rank_by, torch.tensor([5, 0])).sum(-1).tolist() == [5, 0]


def test_mask_boxes_are_the_tight_boxes_of_the_drawn_alpha():
    """A box drawn from the full-canvas oracle's alpha equals mask_boxes of the windowed render."""
    torch.manual_seed(0)
    coder = BoxCoder()
    b, m, s, hw = 2, 6, 16, (64, 64)
    raw = torch.randn(b, m, 2)
    sx, sy = coder.scale(raw[..., 0], raw[..., 1])
    centre = torch.rand(b, m, 2) * 2.2 - 1.1  # some cross the border, are clipped
    boxes = torch.cat([sx[..., None], sy[..., None], centre], -1)
    glimpses = torch.zeros(b, m, 4, s, s)
    glimpses[..., 4:11, 3:9] = 1.0  # alpha (and colour) on a sub-rectangle of each glimpse
    glimpses[1, 2] = 0.0  # draws nothing
    win = render_windows(glimpses, boxes, window_size(*coder.max_scale, s, hw), hw)
    got, drawn = mask_boxes(win, hw)
    alpha = render_full(glimpses, boxes, hw)[:, :, 3] > 0.5  # (B, M, H, W)
    for i in range(b):
        for j in range(m):
            ys, xs = alpha[i, j].nonzero(as_tuple=True)
            assert bool(drawn[i, j]) == (len(ys) > 0)
            if len(ys):
                want = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / 64
                torch.testing.assert_close(got[i, j], want.float(), atol=1e-6, rtol=0)
            else:
                assert (got[i, j] == 0).all()
    assert not drawn[1, 2] and drawn.sum() >= b * m - 2


def test_box_sources():
    """box_source=where reports the glimpse boxes, mask the drawn boxes inside them; the tracks are the same."""
    torch.manual_seed(0)
    video = torch.rand(2, 4, 3, 64, 64)
    outs = {}
    for source in ("where", "mask"):
        torch.manual_seed(1)
        m = tiny(box_source=source)
        m.eval()
        with torch.no_grad():
            outs[source] = m(video, Schedule(), track_only=True, deterministic=True)
    where, mask = outs["where"], outs["mask"]
    assert torch.equal(where.ids, mask.ids) and torch.equal(where.counts, mask.counts)
    drawn = mask.presence > 0
    assert drawn.any()
    # Every drawn box lies inside its glimpse box's window (up to the bilinear footprint of one glimpse pixel).
    slack = 2 / 64
    inside = ((mask.boxes[..., :2] >= where.boxes[..., :2] - slack) & (mask.boxes[..., 2:] <= where.boxes[..., 2:] + slack))
    assert inside.all(-1)[drawn].all()
    assert (mask.presence <= where.presence).all()
    with pytest.raises(ConfigError, match="model.box_source"):
        tiny(box_source="corners")
