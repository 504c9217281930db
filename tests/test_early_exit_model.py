"""model.py early exit: exit-layer logits, exit statistics, state propagation, KV decoding."""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import exits   # noqa: E402
import model as model_mod   # noqa: E402
from model import GPT, GPTConfig   # noqa: E402

torch.set_num_threads(1)
L, V = 4, 64


def make(share=False, propagate=True, **kw):
    """Tiny model with peaky, layer-dependent confidences (random init is nearly uniform)."""
    args = dict(block_size=16, vocab_size=V, n_layer=L, n_head=2, n_embd=32,
                share_weights=share, exit_propagate=propagate)
    args.update(kw)
    torch.manual_seed(0)
    m = GPT(GPTConfig(**args)).eval()
    with torch.no_grad():
        m.transformer.wte.weight.mul_(10)
        for p in m.transformer.h.parameters():
            p.mul_(5)
    return m


def data(B=2, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)


def mid_threshold(m, idx):
    """A threshold between two layer-1 confidences near their median (never equal to one)."""
    with torch.no_grad():
        x = m.transformer.wte(idx) + m.transformer.wpe(torch.arange(idx.size(1)))
        p = F.softmax(m.lm_head(m.transformer.ln_f(m.block(0)(x)[0])), -1).amax(-1)
    s = p.flatten().sort().values
    k = len(s) // 2
    return float((s[k - 1] + s[k]) / 2)


def confidence_of(name, probs, targets):
    """Slow reference confidences from the full softmax (B, T, V)."""
    top2 = probs.topk(2, dim=-1).values
    if name == "max-prob":
        return top2[..., 0]
    if name == "top2-margin":
        return top2[..., 0] - top2[..., 1]
    return probs.gather(-1, targets[..., None])[..., 0]


def brute_force(m, idx, targets, thr, propagate, confidence="max-prob"):
    """Layer by layer, token by token: exit layer (B, T) 0-based, exit logits (B, T, V),
    states after each layer, and the per-layer records an exit loss sees."""
    B, T = idx.shape
    with torch.no_grad():
        x = m.transformer.wte(idx) + m.transformer.wpe(torch.arange(T))
        running = [[True] * T for _ in range(B)]
        exit_layer = torch.full((B, T), L - 1)
        logits_exit = torch.zeros(B, T, V)
        states, recs = [], []
        for l in range(L):
            out, _ = m.block(l)(x)
            if propagate:
                keep = torch.tensor(running, dtype=torch.bool)[..., None]
                out = torch.where(keep, out, x)
            x = out
            states.append(x.clone())
            logits = m.lm_head(m.transformer.ln_f(x))
            probs = F.softmax(logits.float(), -1)
            conf = confidence_of(confidence, probs, targets)
            mask = torch.tensor(running, dtype=torch.float32)
            just = torch.zeros(B, T)
            for b in range(B):
                for t in range(T):
                    if running[b][t] and (conf[b, t] >= thr or l == L - 1):
                        running[b][t] = False
                        exit_layer[b, t] = l
                        logits_exit[b, t] = logits[b, t]
                        just[b, t] = 1.0
            xe = F.cross_entropy(logits.float().view(-1, V), targets.view(-1), reduction="none")
            recs.append(dict(xe=xe.view(B, T), confidence=conf, probs=probs, mask_BT=mask,
                             just_triggered=just))
    return exit_layer, logits_exit, states, recs


def set_exit(m, thr, mode="threshold"):
    m.config.early_exit, m.config.exit_threshold, m.config.exit_mode = True, thr, mode
    return m


# ----------------------------------------------------------------------------------------------
# forward

@pytest.mark.parametrize("propagate", [True, False])
@pytest.mark.parametrize("share", [False, True])
def test_threshold_above_one_equals_full_depth(share, propagate):
    m = make(share, propagate)
    idx, y = data()
    with torch.no_grad():
        full, _ = m(idx)
        set_exit(m, 1.01)
        out = m(idx, y, return_stats=True)
        ee, _ = out
        st = out.stats
    assert torch.equal(ee, full)
    assert torch.equal(st["earlystopdict"], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    assert float(st["earlystop"]) == 0.0 and float(st["exit_depth"]) == L


@pytest.mark.parametrize("share", [False, True])
def test_threshold_zero_is_layer_one_head(share):
    m = set_exit(make(share), 0.0)
    idx, _ = data()
    with torch.no_grad():
        x = m.transformer.wte(idx) + m.transformer.wpe(torch.arange(idx.size(1)))
        ref = m.lm_head(m.transformer.ln_f(m.transformer.h[0](x)[0]))
        logits, _ = m(idx)
    assert torch.equal(logits, ref)


@pytest.mark.parametrize("confidence", ["max-prob", "top2-margin", "target-prob"])
@pytest.mark.parametrize("propagate", [True, False])
@pytest.mark.parametrize("share", [False, True])
def test_exit_stats_and_logits_match_brute_force(share, propagate, confidence):
    m = make(share, propagate, confidence=confidence)
    idx, y = data()
    thr = mid_threshold(m, idx)
    if confidence != "max-prob":
        thr = 0.1
    set_exit(m, thr)
    with torch.no_grad():
        out = m(idx, y, return_stats=True)
        logits, _ = out
        st = out.stats
    exit_layer, ref_logits, _, _ = brute_force(m, idx, y, thr, propagate, confidence)
    esd = torch.stack([(exit_layer == l).float().mean() for l in range(L)])
    torch.testing.assert_close(st["earlystopdict"], esd)
    torch.testing.assert_close(st["earlystopdict"].sum(), torch.tensor(1.0))
    torch.testing.assert_close(st["earlystop"], 1.0 - esd[-1])
    torch.testing.assert_close(st["exit_depth"], (exit_layer + 1).float().mean())
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    if confidence == "max-prob":
        assert 0 < esd[0] < 1 and esd[1:-1].sum() > 0     # a real mix of exit layers


@pytest.mark.parametrize("share", [False, True])
def test_exit_propagate_freezes_exited_state(share):
    idx, y = data()
    for propagate in (True, False):
        m = make(share, propagate)
        thr = mid_threshold(m, idx)
        set_exit(m, thr)
        seen = []
        hook = m.transformer.ln_f.register_forward_pre_hook(lambda mod, a: seen.append(a[0].detach()))
        with torch.no_grad():
            m(idx, y)
        hook.remove()
        states = seen[:L]                                  # ln_f input after each layer
        exit_layer, _, ref_states, _ = brute_force(m, idx, y, thr, propagate)
        for l in range(L):
            torch.testing.assert_close(states[l], ref_states[l], atol=1e-5, rtol=1e-5)
        early = exit_layer < L - 1
        assert early.any()
        for l in range(1, L):
            frozen = (exit_layer < l)                      # exited before layer l
            same = (states[l] == states[l - 1]).all(-1)
            if propagate:
                assert same[frozen].all()
            else:
                assert not same[frozen].any()
            assert not same[~frozen].any()                 # running tokens keep computing


LOSS_OPTIONS = dict(layerskip_scale=0.5, layerskip_curriculum="rotational", layerskip_rotation=3,
                    prev_token_shift=0)


@pytest.mark.parametrize("exit_loss,opts", [
    ("4-test", {}), ("5-test", {}), ("all-layers", {}), ("layerskip", {}), ("final", {}),
    ("layerskip", LOSS_OPTIONS), ("reward-prev-token", LOSS_OPTIONS)])
def test_exit_loss_sees_the_exit_masks(exit_loss, opts):
    """The model hands exits.EXIT_LOSSES the layer records of the brute-force exit process, and
    the loss options of its config (+ the step given to set_progress)."""
    m = make(False, True, exit_loss=exit_loss, **opts)
    idx, y = data()
    thr = mid_threshold(m, idx)
    set_exit(m, thr)
    m.set_progress(0.3, step=4)
    out = m(idx, y, return_stats=True, return_logits=False)
    _, loss = out
    st = out.stats
    _, _, _, recs = brute_force(m, idx, y, thr, True)
    layers = [exits.LayerOut(layer=l, xe=r["xe"], confidence=r["confidence"],
                             p_max=r["confidence"], p_second=r["probs"].topk(2, -1).values[..., 1],
                             argmax=r["probs"].argmax(-1),
                             p_target=r["probs"].gather(-1, y[..., None])[..., 0],
                             mask_BT=r["mask_BT"], just_triggered=r["just_triggered"])
              for l, r in enumerate(recs)]
    ctx = exits.LossContext(GPTConfig(n_layer=L, **opts), progress=0.3, targets=y, step=4)
    ref = exits.EXIT_LOSSES[exit_loss](layers, ctx)
    if opts:   # the options matter: the defaults give another loss
        other = exits.EXIT_LOSSES[exit_loss](layers, exits.LossContext(GPTConfig(n_layer=L),
                                                                       progress=0.3, targets=y, step=4))
        assert not torch.allclose(other.loss, ref.loss)
    torch.testing.assert_close(loss.detach(), ref.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(st["confloss"], ref.confloss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(st["targetloss"], ref.targetloss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(st["layer_losses"], torch.stack([r["xe"].mean() for r in recs]))


def test_sample_mode_exits_sum_to_one():
    m = make()
    set_exit(m, 0.5, mode="sample")
    idx, y = data()
    torch.manual_seed(1)
    out = m(idx, y, return_stats=True)
    st = out.stats
    torch.testing.assert_close(st["earlystopdict"].sum(), torch.tensor(1.0))
    assert st["earlystopdict"][0] > 0


# ----------------------------------------------------------------------------------------------
# early-exit decoding

def greedy_reference(m, idx, n, step_logits=None):
    """No cache: recompute every position with model.forward at each step, under the exit rule
    generate() implements: threshold exit with the exited state propagated (exit_propagate=True,
    whatever the model's config says for training). step_logits: list to collect the (B, V)
    logits each step's token was chosen from."""
    keep = m.config.exit_propagate
    m.config.exit_propagate = True
    try:
        for _ in range(n):
            with torch.no_grad():
                logits, _ = m(idx[:, -m.config.block_size:])
            if step_logits is not None:
                step_logits.append(logits[:, -1].float())
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    finally:
        m.config.exit_propagate = keep
    return idx


@pytest.mark.parametrize("n_new", [10, 20])          # 20 runs past block_size 16 (cropping)
@pytest.mark.parametrize("propagate", [True, False])
@pytest.mark.parametrize("share", [False, True])
def test_early_exit_kv_decoding_equals_no_cache(share, propagate, n_new):
    """Tokens and every step's logits equal the no-cache reference (the model's training-time
    exit_propagate setting does not change decoding)."""
    m = make(share, propagate)
    prompt, _ = data(T=4)
    thr = mid_threshold(m, prompt)
    ref_logits, got_logits = [], []
    ref = greedy_reference(set_exit(m, thr), prompt, n_new, ref_logits)
    m.config.early_exit = False                       # the keyword alone turns early exit on
    out = m.generate(prompt, n_new, temperature=0, exit_threshold=thr, step_logits=got_logits)
    assert torch.equal(out, ref)
    assert len(got_logits) == len(ref_logits) == n_new
    for g, r in zip(got_logits, ref_logits):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
    depth = m.last_generate_stats["avg_exit_depth"]
    assert 1.0 < depth < L                            # tokens did exit at various depths


@pytest.mark.parametrize("share", [False, True])
def test_early_exit_decoding_threshold_above_one_is_full_depth(share):
    m = make(share)
    prompt, _ = data(T=4)
    full = m.generate(prompt, 10, temperature=0)
    assert m.last_generate_stats["avg_exit_depth"] == L
    assert torch.equal(m.generate(prompt, 10, temperature=0, exit_threshold=1.01), full)
    assert m.last_generate_stats["avg_exit_depth"] == L


def test_early_exit_decoding_from_config():
    m = make(True)
    prompt, _ = data(T=4)
    thr = mid_threshold(m, prompt)
    set_exit(m, thr)
    assert torch.equal(m.generate(prompt, 8, temperature=0), greedy_reference(m, prompt, 8))


@pytest.mark.parametrize("share", [False, True])
def test_exited_token_kv_never_projected_when_no_later_token_reads_it(share, monkeypatch):
    """threshold 0: every token exits at layer 1, so no later token ever attends at layers
    2..L: decoding with the Block modules, the exited tokens' deeper K/V are deferred until
    read, i.e. never projected (counts when they are read, and the shared pre-ln kernel, which
    takes them from the matmul that gave the exit head: tests/test_decode.py)."""
    import decode
    monkeypatch.setattr(decode, "kernel_for", decode._Blocks)
    calls = {"forward": 0, "project_kv": 0}
    orig_fwd = model_mod.CausalSelfAttention.forward
    orig_kv = model_mod.CausalSelfAttention.project_kv

    def fwd(self, *a, **k):
        calls["forward"] += 1
        return orig_fwd(self, *a, **k)

    def kv(self, *a, **k):
        calls["project_kv"] += 1
        return orig_kv(self, *a, **k)

    m = make(share)
    prompt, _ = data(B=1, T=4)
    ref = greedy_reference(set_exit(m, 0.0), prompt, 6)
    monkeypatch.setattr(model_mod.CausalSelfAttention, "forward", fwd)
    monkeypatch.setattr(model_mod.CausalSelfAttention, "project_kv", kv)
    out = m.generate(prompt, 6, temperature=0, exit_threshold=0.0)
    assert torch.equal(out, ref)
    steps = 6                                     # 1 prefill + 5 single-token steps
    assert calls["forward"] == steps              # layer 1 only
    assert calls["project_kv"] == 0
    assert m.last_generate_stats["avg_exit_depth"] == 1.0


# ----------------------------------------------------------------------------------------------
# every confidence measure: exact full depth when it never fires; decoding == forward


MEASURES = sorted(exits.CONFIDENCES)


def make_measure(name, share=True, **kw):
    """make() with confidence `name`, argmax_stable_k 1 and a random exit classifier."""
    m = make(share, confidence=name, layer_heads=True, argmax_stable_k=1, **kw)
    if hasattr(m, "exit_classifier"):
        with torch.no_grad():
            torch.manual_seed(1)
            m.exit_classifier.weight.normal_(0, 1.0)
    return m


def spread_threshold(m, idx):
    """Midpoint of the widest gap between distinct layer-1..L-1 confidences in their middle
    half: tokens exit at various depths, none within roundoff of the threshold."""
    with torch.no_grad():
        r = m._trunk(idx, heads_on=True)
    c = torch.cat([o.confidence.flatten() for o in r["layers"][:-1]]).unique().sort().values
    lo, hi = len(c) // 4, max(len(c) // 4 + 2, 3 * len(c) // 4)
    c = c[lo:hi]
    i = int((c[1:] - c[:-1]).argmax())
    return float((c[i] + c[i + 1]) / 2)


@pytest.mark.parametrize("name", MEASURES)
def test_measure_never_firing_is_full_depth_forward_and_decode(name):
    """Threshold 1.01 never fires (every measure is <= 1): logits, stats and greedy decoding
    equal full depth exactly."""
    m = make_measure(name)
    idx, y = data()
    with torch.no_grad():
        full, _ = m(idx)
        st = set_exit(m, 1.01)(idx, y, return_stats=True).stats
        assert torch.equal(m(idx)[0], full)
    assert float(st["exit_depth"]) == L
    m.config.early_exit = False
    prompt = idx[:, :4]
    ref = m.generate(prompt, 8, temperature=0)
    assert torch.equal(m.generate(prompt, 8, temperature=0, exit_threshold=1.01), ref)
    assert m.last_generate_stats["avg_exit_depth"] == L


@pytest.mark.parametrize("name", [n for n in MEASURES if n != "target-prob"])
def test_measure_decoding_equals_forward_reference(name):
    """KV-cached early-exit decoding with each measure (rows leave the batch, its per-row state
    is carried: previous logits, argmax history) == the no-cache forward, token for token."""
    m = make_measure(name)
    prompt, _ = data(B=3, T=5)
    thr = spread_threshold(m, prompt)
    ref_logits, got_logits = [], []
    ref = greedy_reference(set_exit(m, thr), prompt, 8, ref_logits)
    m.config.early_exit = False
    out = m.generate(prompt, 8, temperature=0, exit_threshold=thr, step_logits=got_logits)
    assert torch.equal(out, ref)
    for g, r in zip(got_logits, ref_logits):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
    assert 1.0 < m.last_generate_stats["avg_exit_depth"] < L


@pytest.mark.parametrize("name", MEASURES)
def test_measure_trains_fused_equals_naive(name):
    """One training forward/backward with early exit and 4-test (whose loss multiplies the
    confidence in): finite, and the fused head's loss and gradients equal the naive head's."""
    grads = {}
    for impl in ("naive", "fused"):
        m = make_measure(name, head_impl=impl, early_exit=True, exit_loss="4-test",
                         exit_threshold=0.5).train()
        idx, y = data()
        loss = m(idx, y).loss
        loss.backward()
        grads[impl] = [loss.detach()] + [p.grad.clone() for p in m.parameters()]
    assert torch.isfinite(grads["naive"][0])
    for a, b in zip(grads["naive"], grads["fused"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_learned_classifier_is_stop_gradient():
    """confidence 'learned' (joint, stop-gradient): same init, same trunk gradients as
    max-prob; the loss adds exactly exits.exit_classifier_loss; the classifier gets gradient."""
    got = {}
    for name in ("max-prob", "learned"):
        m = make(True, confidence=name, exit_loss="all-layers").train()
        idx, y = data()
        out = m(idx, y, return_stats=True)
        out.loss.backward()
        got[name] = (out, {k: p.grad for k, p in m.named_parameters()}, m)
    (a, ga, _), (b, gb, mb) = got["max-prob"], got["learned"]
    layers = mb._trunk(idx, y, heads_on=True)["layers"]
    torch.testing.assert_close(b.loss, a.loss + exits.exit_classifier_loss(layers))
    for k, g in ga.items():
        assert torch.equal(g, gb[k]), k
    assert gb["exit_classifier.weight"].abs().sum() > 0
