"""exits.py against slow references written straight from the journal's formulas.

Every registered exit loss must have an entry in REFERENCES and USES below: a new loss without a
reference fails `test_every_loss_has_a_reference`, and the parametrized tests cover it.
Tiny batch: B=2, T=3, L=3, V=3 (V small so that layers' argmaxes sometimes agree).
"""
import math

import pytest
import torch

import exits
import heads
from model import GPTConfig

B, T, L, V = 2, 3, 3, 3
# exit layer of each token (0-based; L-1 = ran to the end); every case appears
EXIT_LAYER = [[0, 1, 2], [2, 1, 0]]
LOSS_NAMES = sorted(exits.EXIT_LOSSES)


# ------------------------------------------------------------------------------ fixtures


def loss_ctx(n_layer, progress=0.0, targets=None, step=0, **fields):
    """exits.LossContext over a GPTConfig of depth n_layer with the given loss fields."""
    return exits.LossContext(GPTConfig(n_layer=n_layer, **fields), progress, targets, step)


def make_case(seed=0, confidence="max-prob", scale=2.0):
    """Per-layer leaf logits (L of (B,T,V)), targets (B,T)."""
    g = torch.Generator().manual_seed(seed)
    logits = [(scale * torch.randn(B, T, V, generator=g)).requires_grad_() for _ in range(L)]
    targets = torch.randint(0, V, (B, T), generator=g)
    return logits, targets


def build_layers(logits, targets, confidence="max-prob", leaves=False):
    """LayerOut list through the real softmax. Exits from EXIT_LAYER via step_masks.
    leaves=True: every float field is a fresh leaf (to see which fields a loss uses)."""
    layers, mask = [], torch.ones(B, T)
    exit_layer = torch.tensor(EXIT_LAYER)
    for l, lg in enumerate(logits):
        logp = lg.log_softmax(-1)
        p = logp.exp()
        top = p.topk(2, dim=-1)
        out = dict(xe=-logp.gather(-1, targets[..., None])[..., 0],
                   p_max=top.values[..., 0], p_second=top.values[..., 1],
                   p_target=p.gather(-1, targets[..., None])[..., 0])
        out["confidence"] = exits.CONFIDENCES[confidence](
            heads.HeadOut(out["xe"], out["p_max"], out["p_second"], None, out["p_target"]))
        if leaves:
            out = {k: v.detach().clone().requires_grad_() for k, v in out.items()}
        jt, nxt = exits.step_masks(mask, exit_layer == l, l == L - 1)
        layers.append(exits.LayerOut(layer=l, argmax=top.indices[..., 0], mask_BT=mask,
                                     just_triggered=jt, **out))
        mask = nxt
    return layers


# ------------------------------------------------------------------------------ references
# Python loops over layers and tokens; per-token softmax recomputed from the logits.


def tok(logits, targets, l, b, t, confidence="max-prob"):
    """Per-token head quantities of layer l at (b, t), from scratch."""
    z = logits[l][b, t]
    e = torch.exp(z - z.max())
    p = e / e.sum()
    srt = sorted(range(V), key=lambda i: float(p[i].detach()), reverse=True)
    p_max, p_second = p[srt[0]], p[srt[1]]
    y = int(targets[b, t])
    conf = {"max-prob": p_max, "top2-margin": p_max - p_second, "target-prob": p[y]}[confidence]
    return dict(xe=-torch.log(p[y]), p_max=p_max, p_target=p[y], conf=conf, argmax=srt[0])


def mean_ce(logits, targets, l):
    return sum(tok(logits, targets, l, b, t)["xe"] for b in range(B) for t in range(T)) / (B * T)


def ref_final(lg, y, ctx, conf):
    return mean_ce(lg, y, L - 1)


def ref_all_layers(lg, y, ctx, conf):
    return sum(mean_ce(lg, y, l) for l in range(L)) / L


def ref_1_noise(lg, y, ctx, conf):
    loss = mean_ce(lg, y, L - 1)
    for l in range(L):
        loss = loss + (-1 * mean_ce(lg, y, l) / L)
    return loss


def ref_2_test(lg, y, ctx, conf):
    loss = mean_ce(lg, y, L - 1)
    for l in range(L):
        loss = loss + torch.log(1 - torch.exp(-1 * mean_ce(lg, y, l))) / L
    return loss


def _exit_weighted(lg, y, conf, field, ce_everywhere):
    """sum_l mean_tokens: running token (l <= exit): field * (xe if exit==l or ce_everywhere else 1)."""
    loss = 0.0
    for l in range(L):
        for b in range(B):
            for t in range(T):
                e = EXIT_LAYER[b][t]
                if l > e:
                    continue                      # exited earlier: not running
                q = tok(lg, y, l, b, t, conf)
                c = q["p_target"] if field == "p_target" else q["conf"]
                loss = loss + (q["xe"] * c if (ce_everywhere or l == e) else c) / (B * T)
    return loss


def ref_3_test(lg, y, ctx, conf):
    return _exit_weighted(lg, y, conf, "conf", ce_everywhere=True)


def ref_4_test(lg, y, ctx, conf):
    return _exit_weighted(lg, y, conf, "conf", ce_everywhere=False)


def ref_6_test(lg, y, ctx, conf):
    return _exit_weighted(lg, y, conf, "p_target", ce_everywhere=False)


def ref_5_test(lg, y, ctx, conf):
    loss = 0.0
    for l in range(1, L):
        for b in range(B):
            for t in range(T):
                e = EXIT_LAYER[b][t]
                if l - 1 > e:
                    continue                      # not running at the previous layer
                c = tok(lg, y, l, b, t, conf)["conf"]
                if l - 1 == e:                    # exited at the previous layer: its CE
                    loss = loss + tok(lg, y, l - 1, b, t)["xe"] * c / (B * T)
                else:
                    loss = loss + c / (B * T)
    return loss


def ref_confidence_penalty(lg, y, ctx, conf):
    loss = mean_ce(lg, y, L - 1)
    for l in range(L):
        for b in range(B):
            for t in range(T):
                loss = loss + torch.log(1 - tok(lg, y, l, b, t)["p_max"]) / (L * B * T)
    return loss


def ref_confidence_penalty_literal(lg, y, ctx, conf):
    loss = mean_ce(lg, y, L - 1)
    for l in range(L):
        for b in range(B):
            for t in range(T):
                loss = loss - torch.log(1 - tok(lg, y, l, b, t)["p_max"]) / (L * B * T)
    return loss


def ref_reward_prev_token(lg, y, ctx, conf):
    s = ctx.prev_token_shift
    loss = mean_ce(lg, y, L - 1)
    for l in range(1, L):
        for b in range(B):
            for t in range(T - s):
                cur, prev = tok(lg, y, l, b, t), tok(lg, y, l - 1, b, t + s)
                if cur["argmax"] == prev["argmax"]:
                    loss = loss - cur["p_max"] / (L * B * T)
    return loss


def ref_layerskip_weights(n, progress, e_scale, curriculum, step=0, R=2):
    e = []
    for l in range(n):
        if l < n - 1:
            e.append(e_scale * sum(range(l + 1)))
        else:
            e.append((n - 1) + e_scale * sum(range(n - 1)))
    on = []
    for l in range(n):
        if curriculum == "none" or l == n - 1:
            on.append(1.0)
        elif curriculum == "gradual":           # one more layer every T/(2n) iterations
            on.append(1.0 if (n - 1 - l) <= math.floor(progress * 2 * n) else 0.0)
        else:
            on.append(1.0 if l % R == step % R else 0.0)
    tot = sum(c * x for c, x in zip(on, e))
    return [c * x / tot for c, x in zip(on, e)]


def ref_layerskip(lg, y, ctx, conf):
    w = ref_layerskip_weights(L, ctx.progress, ctx.layerskip_scale, ctx.layerskip_curriculum,
                              ctx.step, ctx.layerskip_rotation)
    return sum(w[l] * mean_ce(lg, y, l) for l in range(L))


REFERENCES = {
    "final": ref_final, "all-layers": ref_all_layers, "1-noise": ref_1_noise,
    "2-test": ref_2_test, "3-test": ref_3_test, "4-test": ref_4_test, "5-test": ref_5_test,
    "6-test": ref_6_test, "confidence-penalty": ref_confidence_penalty,
    "confidence-penalty-literal": ref_confidence_penalty_literal,
    "reward-prev-token": ref_reward_prev_token, "layerskip": ref_layerskip,
}

# which LayerOut fields each loss may differentiate through, per layer (None = all layers)
ALL = tuple(range(L))
USES = {
    "final": {"xe": (L - 1,)},
    "all-layers": {"xe": ALL},
    "1-noise": {"xe": ALL},
    "2-test": {"xe": ALL},
    "3-test": {"xe": ALL, "confidence": ALL},
    "4-test": {"xe": ALL, "confidence": ALL},
    "5-test": {"xe": tuple(range(L - 1)), "confidence": tuple(range(1, L))},
    "6-test": {"xe": ALL, "p_target": ALL},
    "confidence-penalty": {"xe": (L - 1,), "p_max": ALL},
    "confidence-penalty-literal": {"xe": (L - 1,), "p_max": ALL},
    "reward-prev-token": {"xe": (L - 1,), "p_max": tuple(range(1, L))},
    "layerskip": {"xe": (1, 2)},   # layer 0's LayerSkip scale is 0 by the formula
}
# (loss, ctx kwargs) cases; layerskip / reward-prev-token also with their options
CASES = [(n, {}) for n in LOSS_NAMES] + [
    ("layerskip", dict(progress=0.0)), ("layerskip", dict(progress=0.2)),
    ("layerskip", dict(progress=1.0, layerskip_scale=0.3)),
    ("layerskip", dict(layerskip_curriculum="none", layerskip_scale=2.0)),
    ("layerskip", dict(layerskip_curriculum="rotational", step=1)),
    ("reward-prev-token", dict(prev_token_shift=0)),
]


def test_every_loss_has_a_reference():
    assert set(REFERENCES) == set(exits.EXIT_LOSSES)
    assert set(USES) == set(exits.EXIT_LOSSES)


# ------------------------------------------------------------------------------ loss tests


@pytest.mark.parametrize("confidence", ["max-prob", "top2-margin"])
@pytest.mark.parametrize("name,kw", CASES)
def test_loss_value_and_grad_match_reference(name, kw, confidence):
    kw = {"progress": 0.7, **kw}
    logits, targets = make_case(seed=1)
    ctx = loss_ctx(L, targets=targets, **kw)
    terms = exits.EXIT_LOSSES[name](build_layers(logits, targets, confidence), ctx)
    got = torch.autograd.grad(terms.loss, logits, allow_unused=True)
    ref_logits = [x.detach().clone().requires_grad_() for x in logits]
    ref = REFERENCES[name](ref_logits, targets, ctx, confidence)
    want = torch.autograd.grad(ref, ref_logits, allow_unused=True)
    torch.testing.assert_close(terms.loss, ref.float(), rtol=1e-5, atol=1e-6)
    for g_got, g_want in zip(got, want):
        g_got = torch.zeros(B, T, V) if g_got is None else g_got
        g_want = torch.zeros(B, T, V) if g_want is None else g_want
        torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-7)


def test_reward_prev_token_case_has_matches_and_mismatches():
    """The fixture must exercise both branches of the reward (else the test above is weak)."""
    logits, targets = make_case(seed=1)
    am = [lg.argmax(-1) for lg in logits]
    m = torch.stack([am[l][:, :-1] == am[l - 1][:, 1:] for l in range(1, L)])
    assert 0 < int(m.sum()) < m.numel()


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_gradient_flows_only_where_formula_says(name):
    logits, targets = make_case(seed=2)
    layers = build_layers(logits, targets, leaves=True)
    terms = exits.EXIT_LOSSES[name](layers, loss_ctx(L, 0.7, targets))
    terms.loss.backward()
    fields = ("xe", "confidence", "p_max", "p_second", "p_target")
    for l, o in enumerate(layers):
        for f in fields:
            g = getattr(o, f).grad
            used = l in USES[name].get(f, ())
            if not used:
                assert g is None or torch.all(g == 0), (name, f, l)
                continue
            assert g is not None and torch.any(g != 0), (name, f, l)
            if name in ("3-test", "4-test", "6-test"):       # nothing after a token exited
                assert torch.all(g[o.mask_BT == 0] == 0), (name, f, l)
            if name in ("4-test", "6-test") and f == "xe":   # CE only at the exit layer
                assert torch.all(g[o.just_triggered == 0] == 0)
                assert torch.all(g[o.just_triggered == 1] != 0)
            if name == "5-test" and f == "xe":               # CE of tokens that exited at l
                assert torch.all(g[o.just_triggered == 0] == 0)
            if name == "5-test" and f == "confidence":       # running at the previous layer
                assert torch.all(g[layers[l - 1].mask_BT == 0] == 0)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_terms_sum_and_need_targets(name):
    logits, targets = make_case(seed=3)
    layers = build_layers(logits, targets)
    t = exits.EXIT_LOSSES[name](layers, loss_ctx(L, 0.7, targets))
    assert t.loss.shape == t.confloss.shape == t.targetloss.shape == ()
    if name in ("final", "all-layers"):
        assert float(t.confloss) == 0.0 and float(t.targetloss) == 0.0
    else:
        torch.testing.assert_close(t.loss, t.confloss + t.targetloss)
    if name in ("1-noise", "2-test", "confidence-penalty", "confidence-penalty-literal",
                "reward-prev-token"):
        torch.testing.assert_close(t.targetloss, layers[-1].xe.mean())
    for o in layers:
        o.xe = None
    with pytest.raises(ValueError, match="needs targets"):
        exits.EXIT_LOSSES[name](layers, loss_ctx(L, 0.7, None))


def test_layer_count_mismatch_is_an_error():
    logits, targets = make_case()
    with pytest.raises(ValueError, match="n_layer"):
        exits.EXIT_LOSSES["final"](build_layers(logits, targets), loss_ctx(L + 1))


def test_log_clamps_keep_losses_finite():
    """confidence-penalty at p_max = 1 and 2-test at CE = 0 stay finite (eps clamp)."""
    logits, targets = make_case()
    layers = build_layers(logits, targets, leaves=True)
    for o in layers:
        o.p_max = torch.ones(B, T, requires_grad=True)
        o.xe = torch.zeros(B, T, requires_grad=True)
    ctx = loss_ctx(L, 0.5, targets)
    for name, sign in (("confidence-penalty", 1), ("confidence-penalty-literal", -1), ("2-test", 1)):
        t = exits.EXIT_LOSSES[name](layers, ctx)
        t.loss.backward()
        assert torch.isfinite(t.loss)
        torch.testing.assert_close(t.confloss, torch.tensor(sign * math.log(ctx.eps)))


def test_layerskip_weights():
    # gradual curriculum: only the last layer at the start (= ordinary loss), all by half-way
    torch.testing.assert_close(exits.layerskip_weights(4, 0.0), torch.tensor([0., 0., 0., 1.]))
    for p in (0.0, 0.1, 0.13, 0.3, 0.5, 0.9, 1.0):
        torch.testing.assert_close(exits.layerskip_weights(4, p, 0.5),
                                   torch.tensor(ref_layerskip_weights(4, p, 0.5, "gradual")))
    w = exits.layerskip_weights(4, 0.5)                 # e = (0, 1, 3, 3+3) / 13 ... normalised
    torch.testing.assert_close(w, torch.tensor([0, 1, 3, 6]) / 10.0)
    assert torch.all(w[1:] > w[:-1])                    # scale increases with depth
    torch.testing.assert_close(exits.layerskip_weights(1, 0.3), torch.ones(1))
    with pytest.raises(ValueError, match="curriculum"):
        exits.layerskip_weights(4, 0.5, curriculum="bogus")


# ------------------------------------------------------------------------------ masks / stats


def brute_exit_layers(conf_LBT, threshold):
    Lc, Bc, Tc = conf_LBT.shape
    out = torch.full((Bc, Tc), Lc - 1)
    for b in range(Bc):
        for t in range(Tc):
            for l in range(Lc):
                if float(conf_LBT[l, b, t]) >= threshold:
                    out[b, t] = l
                    break
    return out


def run_masks(conf_LBT, threshold, mode="threshold"):
    layers, mask = [], torch.ones(conf_LBT.shape[1:])
    for l in range(conf_LBT.shape[0]):
        trig = exits.EXIT_RULES[mode](conf_LBT[l], threshold)
        jt, nxt = exits.step_masks(mask, trig, l == conf_LBT.shape[0] - 1)
        layers.append(exits.LayerOut(l, None, conf_LBT[l], conf_LBT[l], conf_LBT[l],
                                     torch.zeros_like(mask, dtype=torch.long), None, mask, jt))
        mask = nxt
    return layers


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.8, 1.01])
def test_exit_summary_matches_brute_force(threshold):
    torch.manual_seed(0)
    Lc = 4
    conf = torch.rand(Lc, 3, 5)
    s = exits.exit_summary(run_masks(conf, threshold))
    ex = brute_exit_layers(conf, threshold)
    want = torch.tensor([float((ex == l).float().mean()) for l in range(Lc)])
    torch.testing.assert_close(s["earlystopdict"], want)
    torch.testing.assert_close(s["earlystopdict"].sum(), torch.tensor(1.0))
    torch.testing.assert_close(s["earlystop"], (ex < Lc - 1).float().mean())
    torch.testing.assert_close(s["exit_depth"], (ex + 1).float().mean())
    if threshold > 1:
        torch.testing.assert_close(s["earlystopdict"], torch.tensor([0., 0., 0., 1.]))
        assert float(s["exit_depth"]) == Lc and float(s["earlystop"]) == 0.0
    if threshold == 0:
        torch.testing.assert_close(s["earlystopdict"], torch.tensor([1., 0., 0., 0.]))
        assert float(s["exit_depth"]) == 1.0


def test_exit_summary_exit_ce_is_ce_at_each_tokens_exit_layer():
    logits, targets = make_case(seed=5)
    layers = build_layers(logits, targets)          # token (b, t) exits at EXIT_LAYER[b][t]
    want = sum(float(tok(logits, targets, EXIT_LAYER[b][t], b, t)["xe"].detach())
               for b in range(B) for t in range(T)) / (B * T)
    assert float(exits.exit_summary(layers)["exit_ce"]) == pytest.approx(want, rel=1e-6)
    last = float(layers[-1].xe.detach().mean())     # without early exit: the last layer's CE
    assert float(exits.exit_summary(layers, early_exit=False)["exit_ce"]) == pytest.approx(last, rel=1e-6)
    for o in layers:
        o.xe = None
    assert math.isnan(float(exits.exit_summary(layers)["exit_ce"]))


def test_exit_summary_without_early_exit_is_zero():
    s = exits.exit_summary(run_masks(torch.rand(3, 2, 4), 0.0), early_exit=False)
    assert torch.equal(s["earlystopdict"], torch.zeros(3))
    assert float(s["earlystop"]) == 0.0 and float(s["exit_depth"]) == 3.0


def test_step_masks():
    mask = torch.tensor([[1., 1., 0., 1.]], requires_grad=True)
    trig = torch.tensor([[True, False, True, False]])
    jt, nxt = exits.step_masks(mask, trig, is_last=False)
    assert torch.equal(jt, torch.tensor([[1., 0., 0., 0.]]))
    assert torch.equal(nxt, torch.tensor([[0., 1., 0., 1.]]))
    assert not jt.requires_grad and not nxt.requires_grad
    jt, nxt = exits.step_masks(mask, trig, is_last=True)
    assert torch.equal(jt, torch.tensor([[1., 1., 0., 1.]])) and torch.equal(nxt, torch.zeros(1, 4))


def test_threshold_rule():
    c = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0])
    assert not exits.EXIT_RULES["threshold"](c, 1.01).any()
    assert exits.EXIT_RULES["threshold"](c, 0.0).all()
    assert exits.EXIT_RULES["threshold"](c, 0.5).tolist() == [False, False, True, True, True]


def test_sample_rule_frequency_is_confidence():
    c = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0]).repeat(20000, 1)       # (20000, 5)
    torch.manual_seed(0)
    fired = exits.EXIT_RULES["sample"](c, 0.99)                         # threshold ignored
    assert fired.dtype == torch.bool
    freq = fired.float().mean(0)
    torch.testing.assert_close(freq, c[0], atol=0.01, rtol=0)
    assert freq[0] == 0 and freq[-1] == 1
    torch.manual_seed(0)
    assert torch.equal(fired, exits.EXIT_RULES["sample"](c, 0.99))     # the seeded global RNG


def test_confidences():
    torch.manual_seed(0)
    h, w, y = torch.randn(6, 8), torch.randn(5, 8), torch.randint(0, 5, (6,))
    out = heads.naive_head_outputs(h, w, y)
    p = torch.softmax(h @ w.T, -1)
    top = p.topk(2, -1).values
    torch.testing.assert_close(exits.CONFIDENCES["max-prob"](out), top[:, 0])
    torch.testing.assert_close(exits.CONFIDENCES["top2-margin"](out), top[:, 0] - top[:, 1])
    torch.testing.assert_close(exits.CONFIDENCES["target-prob"](out), p[torch.arange(6), y])
    # without targets (generation) the target is the greedy token: p_target becomes p_max
    no_y = heads.naive_head_outputs(h, w, None)
    assert torch.equal(exits.CONFIDENCES["target-prob"](no_y), exits.CONFIDENCES["max-prob"](no_y))


def test_check_name_lists_known():
    exits.check_name("exit_loss", "4-test")
    with pytest.raises(ValueError, match="known: .*4-test"):
        exits.check_name("exit_loss", "4test")
    with pytest.raises(ValueError, match="known: argmax-stable, entropy, kl-prev, learned, max-prob"):
        exits.check_name("confidence", "entropie")


def logit_measure(name, impl, h, w, h_prev=None, **cfg):
    """CONFIDENCES[name] of a logit_stat measure through heads.logit_statistic (as the model
    computes it; 2-row chunks in the chunked impls) -> (n,)."""
    meas = exits.CONFIDENCES[name]
    stat = heads.logit_statistic(meas.logit_stat, h, w, h_prev, impl=impl, rows=2)
    out = exits.ConfIn(heads.naive_head_outputs(h, w), config=GPTConfig(vocab_size=w.shape[0], **cfg),
                       stat=stat)
    return meas(out)


@pytest.mark.parametrize("impl", sorted(heads.HEAD_IMPLS))
def test_entropy_value_and_grad_match_formula(impl):
    """confidence = 1 - H / log V with H = -sum p log p; gradient from the formula
    dH/dz = -p (log p + H), chained through z = h W^T (float64 reference)."""
    torch.manual_seed(0)
    h = torch.randn(5, 8, requires_grad=True)
    w = torch.randn(7, 8, requires_grad=True)
    conf = logit_measure("entropy", impl, h, w)
    g = torch.randn(5)
    (conf * g).sum().backward()
    z = (h.double() @ w.double().T).detach()
    logp = torch.log_softmax(z, -1)
    H = -(logp.exp() * logp).sum(-1)
    torch.testing.assert_close(conf, (1 - H / math.log(7)).float())
    dz = (g.double() / math.log(7))[:, None] * logp.exp() * (logp + H[:, None])   # d conf / dz
    torch.testing.assert_close(h.grad.double(), dz @ w.double(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w.grad.double(), dz.T @ h.double(), rtol=1e-4, atol=1e-5)
    uniform = logit_measure("entropy", impl, torch.zeros(2, 8), w.detach())
    assert torch.equal(uniform, torch.zeros(2))


@pytest.mark.parametrize("impl", sorted(heads.HEAD_IMPLS))
def test_kl_prev_value_and_grad_match_formula(impl):
    """confidence = exp(-KL(p || q)), p = softmax(h W^T), q = softmax(h_prev W^T); gradients
    from dKL/dz_p = p (log p - log q - KL), dKL/dz_q = q - p (float64 reference)."""
    torch.manual_seed(1)
    h, hp = torch.randn(5, 8, requires_grad=True), torch.randn(5, 8, requires_grad=True)
    w = torch.randn(7, 8, requires_grad=True)
    conf = logit_measure("kl-prev", impl, h, w, hp)
    g = torch.randn(5)
    (conf * g).sum().backward()
    zp, zq = (h.double() @ w.double().T).detach(), (hp.double() @ w.double().T).detach()
    lp, lq = torch.log_softmax(zp, -1), torch.log_softmax(zq, -1)
    p, q = lp.exp(), lq.exp()
    kl = (p * (lp - lq)).sum(-1)
    c = torch.exp(-kl)
    torch.testing.assert_close(conf, c.float())
    gk = (-g.double() * c)[:, None]                                    # d out / d KL
    dzp, dzq = gk * p * (lp - lq - kl[:, None]), gk * (q - p)
    tol = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(h.grad.double(), dzp @ w.double(), **tol)
    torch.testing.assert_close(hp.grad.double(), dzq @ w.double(), **tol)
    torch.testing.assert_close(w.grad.double(), dzp.T @ h.double() + dzq.T @ hp.double(), **tol)
    same = logit_measure("kl-prev", impl, h.detach(), w.detach(), h.detach())
    assert torch.equal(same, torch.ones(5))                             # KL 0: confidence 1
    out0 = exits.ConfIn(heads.naive_head_outputs(h.detach(), w.detach()), config=GPTConfig())
    assert torch.equal(exits.CONFIDENCES["kl-prev"](out0), torch.zeros(5))   # layer 0


def test_argmax_stable_counts_consecutive_layers():
    """1 iff the argmax equals that of each of the last k layers."""
    am = torch.tensor([3, 3, 3, 1])
    hist = [torch.tensor([0, 3, 3, 1]), torch.tensor([3, 3, 2, 1])]    # oldest first
    head = heads.HeadOut(None, torch.ones(4), torch.zeros(4), am, None)
    for k, want in ((1, [1, 1, 0, 1]), (2, [0, 1, 0, 1]), (3, [0, 0, 0, 0])):
        out = exits.ConfIn(head, config=GPTConfig(argmax_stable_k=k), hist=hist)
        assert torch.equal(exits.CONFIDENCES["argmax-stable"](out), torch.tensor(want).float())


def test_state_cosine_value_and_grad_match_formula():
    """cos = <a, b> / (|a| |b|); d cos / d b = a / (|a||b|) - cos b / |b|^2 (and symmetric)."""
    torch.manual_seed(2)
    a, b = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    head = heads.HeadOut(None, torch.ones(4), torch.zeros(4), torch.zeros(4, dtype=torch.long), None)
    conf = exits.CONFIDENCES["state-cosine"](exits.ConfIn(head, x_in=a, x_out=b))
    g = torch.randn(4)
    (conf * g).sum().backward()
    A, Bv = a.detach().double(), b.detach().double()
    na, nb = A.norm(dim=-1, keepdim=True), Bv.norm(dim=-1, keepdim=True)
    cos = (A * Bv).sum(-1, keepdim=True) / (na * nb)
    torch.testing.assert_close(conf, cos[:, 0].float())
    G = g.double()[:, None]
    torch.testing.assert_close(b.grad.double(), G * (A / (na * nb) - cos * Bv / nb ** 2), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(a.grad.double(), G * (Bv / (na * nb) - cos * A / na ** 2), rtol=1e-4, atol=1e-6)


def test_learned_confidence_and_classifier_loss_match_formula():
    """confidence = sigmoid(logit); loss = mean over layers < L-1 of BCE against
    1[argmax_l == argmax_{L-1}]; d loss / d logit = (sigmoid - label) / (n (L - 1))."""
    logits = [torch.tensor([[2.0, -1.0]], requires_grad=True) for _ in range(2)]
    am = [torch.tensor([[1, 2]]), torch.tensor([[1, 5]]), torch.tensor([[1, 3]])]
    head = heads.HeadOut(None, torch.ones(2), torch.zeros(2), am[0][0], None)
    conf = exits.CONFIDENCES["learned"](exits.ConfIn(head, exit_logit=logits[0][0]))
    torch.testing.assert_close(conf, torch.sigmoid(torch.tensor([2.0, -1.0])))
    layers = [exits.LayerOut(layer=l, xe=None, confidence=None, p_max=torch.ones(1, 2),
                             p_second=None, argmax=am[l], p_target=None, mask_BT=None,
                             just_triggered=None, exit_logit=logits[l] if l < 2 else None)
              for l in range(3)]
    loss = exits.exit_classifier_loss(layers)
    s = lambda x: 1 / (1 + math.exp(-x))          # noqa: E731
    # labels (1, 0) at both layers, logits (2, -1) at both: mean over 2 tokens and 2 layers
    want = -(math.log(s(2.0)) + math.log(1 - s(-1.0))) / 2
    assert abs(loss.item() - want) < 1e-6
    loss.backward()
    for lg in logits:
        torch.testing.assert_close(lg.grad, (torch.sigmoid(lg.detach()) - torch.tensor([[1.0, 0.0]])) / 4)


def test_every_confidence_has_a_reference_test():
    """A new measure needs its reference test here (named test_<name>_...)."""
    names = {n.replace("-", "_") for n in exits.CONFIDENCES}
    tests = " ".join(k for k in globals() if k.startswith("test_"))
    missing = {n for n in names if f"test_{n}" not in tests} - {"max_prob", "top2_margin",
                                                               "target_prob"}
    assert not missing, f"confidences without a reference test: {sorted(missing)}"
