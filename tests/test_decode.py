"""decode.py: batched early-exit decoding and prefill that skip exited tokens, exact against the
masked reference; self-speculative decoding (greedy identical to full depth, sampling with
the full model's distribution)."""
import contextlib
import math
import os
import re
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import decode   # noqa: E402
import exits   # noqa: E402
import model as model_mod   # noqa: E402
from model import BLOCKS, GPT, GPTConfig   # noqa: E402

torch.set_num_threads(1)
L, V = 4, 64


def make(block_type="pre-ln", share=True, pos_encoding="learned", n_layer=L, vocab=V, seed=0,
         scale=5.0, **kw):
    """Tiny model with peaky, layer-dependent confidences (random init is nearly uniform)."""
    torch.manual_seed(seed)
    m = GPT(GPTConfig(block_size=32, vocab_size=vocab, n_layer=n_layer, n_head=2, n_embd=32,
                      share_weights=share, block_type=block_type, pos_encoding=pos_encoding,
                      **kw)).eval()
    with torch.no_grad():
        m.transformer.wte.weight.mul_(10)
        for p in m.transformer.h.parameters():
            p.mul_(scale)
    decode.kernel_for(m, decode._head_fn(m))      # its probe now: not seen by hooks in tests
    return m


def prompts(B, T, seed=0, vocab=V):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def masked_reference(m, idx, n, thr):
    """No cache, every layer on every token: model.forward with early exit and the exited
    state propagated (torch.where), recomputed from scratch at every step. -> (tokens (B, T+n),
    [(B, V) logits each step chose from])."""
    cfg = m.config
    keep = (cfg.early_exit, cfg.exit_threshold, cfg.exit_mode, cfg.exit_propagate)
    cfg.early_exit, cfg.exit_threshold, cfg.exit_mode, cfg.exit_propagate = (
        thr is not None, 2.0 if thr is None else thr, "threshold", True)
    steps = []
    try:
        for _ in range(n):
            with torch.no_grad():
                logits, _ = m(idx[:, -cfg.block_size:])
            steps.append(logits[:, -1].float())
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    finally:
        cfg.early_exit, cfg.exit_threshold, cfg.exit_mode, cfg.exit_propagate = keep
    return idx, steps


def generate_equals_reference(m, idx, n, thr, **kw):
    """m.generate(idx, n, greedy, exit_threshold=thr) == masked_reference: the same tokens and
    every step's logits within fp32 tolerance -> the tokens."""
    got = []
    out = m.generate(idx, n, temperature=0, exit_threshold=thr, step_logits=got, **kw)
    ref, ref_logits = masked_reference(m, idx, n, thr)
    assert torch.equal(out, ref)
    assert len(got) == n
    for g, r in zip(got, ref_logits):
        torch.testing.assert_close(g, r)      # fp32: atol 1e-5, rtol 1.3e-6
    return out


def layer1_median_confidence(m, idx, q=0.5):
    """A threshold near the median (quantile q) layer-1 confidence of idx: tokens exit at
    various depths."""
    with torch.no_grad():
        x, rope = m._embed(idx)
        h, _ = m.block(0)(x, rope)
        p = F.softmax(m.lm_head(m.transformer.ln_f(h)).float(), -1).amax(-1).flatten().sort().values
    k = max(int(len(p) * q), 1)
    return float((p[k - 1] + p[k]) / 2)


def between(values, q, window=0.1):
    """A threshold near quantile q of values (N,): the midpoint of the widest gap between
    neighbouring sorted values within quantiles q - window .. q + window. No value sits on or
    near it, so no exit decision hangs on a confidence's last bits (the kernel's and the Block
    modules' heads round differently; greedy continuations repeat near-equal confidences)."""
    v = values.flatten().sort().values
    n = v.numel()
    lo = min(max(int((q - window) * (n - 1)), 0), n - 2)
    hi = max(min(int((q + window) * (n - 1)) + 1, n - 1), lo + 1)
    k = lo + int((v[lo + 1:hi + 1] - v[lo:hi]).argmax())
    return float((v[k] + v[k + 1]) / 2)


def generated_median_confidence(m, idx, n, q=0.5):
    """A threshold at quantile q of the layer 1..L-1 confidences along the full-depth greedy
    continuation of idx by n tokens (`between` two of them): decoding it, tokens exit at
    various depths."""
    with torch.no_grad():
        x, rope = m._embed(m.generate(idx, n, temperature=0))
        p = []
        for l in range(m.config.n_layer - 1):
            x, _ = m.block(l)(x, rope)
            p.append(F.softmax(m.lm_head(m.transformer.ln_f(x)).float(), -1).amax(-1).flatten())
    return between(torch.cat(p), q)


def count_mlp_rows(m):
    """Forward hooks counting the token rows every block application's MLP sees."""
    seen = []
    hooks = [blk.mlp.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[:-1].numel()))
             for blk in m.transformer.h]
    return seen, hooks


# ----------------------------------------------------------------------------------------------
# batched early exit: exact, and exited tokens skip the deeper blocks


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("block_type", sorted(BLOCKS))
def test_batched_early_exit_equals_masked_reference(block_type, share):
    """Batch 3, prompts of 6 tokens (prefill packs the tokens still running), 12 new tokens
    (rows leave the batch as they exit): every step's logits within fp32 tolerance (atol 1e-5)
    of the masked reference."""
    # weights x3 (x5 puts the multiplicative wirings' fp32 roundoff at ~5e-5 in the logits)
    m = make(block_type, share, pos_encoding="rope" if share else "learned", scale=3.0)
    idx = prompts(3, 6, seed=1)
    generate_equals_reference(m, idx, 12, layer1_median_confidence(m, idx))
    assert 1.0 < m.last_generate_stats["avg_exit_depth"] < L


@pytest.mark.parametrize("pos_encoding", ["learned", "rope", "sinusoidal", "none"])
def test_batched_early_exit_past_block_size(pos_encoding):
    """40 new tokens after 6 with block_size 32: the cropped context is re-encoded (prefill
    with per-token exits) every step past the window, as the reference recomputes it."""
    m = make(pos_encoding=pos_encoding)
    idx = prompts(2, 6, seed=2)
    generate_equals_reference(m, idx, 40, layer1_median_confidence(m, idx))


@pytest.mark.parametrize("share", [True, False])
def test_exited_tokens_skip_deeper_blocks(share):
    """The MLP of every block application sees exactly the tokens still running: summed over
    layers, the prompt's and every fed token's exit depth (per-token exits in the reference)."""
    m = make(share=share)
    idx = prompts(3, 8, seed=3)
    thr = layer1_median_confidence(m, idx)
    seen, hooks = count_mlp_rows(m)
    try:
        out = m.generate(idx, 10, temperature=0, exit_threshold=thr)
    finally:
        for h in hooks:
            h.remove()
    cfg = m.config
    cfg.early_exit, cfg.exit_threshold, cfg.exit_propagate = True, thr, True
    with torch.no_grad():     # exits depend only on the prefix: one forward gives every depth
        r = m._trunk(out[:, :-1], early=True, threshold=thr, mode="threshold", heads_on=True)
    depth = r["depth"]
    assert sum(seen) == int(depth.sum())
    assert sum(seen) < out[:, :-1].numel() * L                  # work was skipped
    assert 1.0 < float(depth.mean()) < L


@pytest.mark.parametrize("share,seed", [(True, 7), (False, 0)])   # seeds: mixed exit depths
def test_exited_tokens_kv_projected_once_when_first_read(share, seed, monkeypatch):
    """Batch 1, one-token prompt (every step one token), the model's Block modules
    (decode._Blocks, what every block type decodes with): an exited token's deeper K/V are
    projected only once a later token runs deeper than it did, all pending tokens in one
    projection. With shared weights each such token is projected exactly once; without, once
    per depth that a later token reads: from its exit depth to the deepest later token's."""
    monkeypatch.setattr(decode, "kernel_for", lambda model, head: decode._Blocks(model, head))
    m = make(share=share)
    idx = prompts(1, 1, seed=seed)
    thr = layer1_median_confidence(m, prompts(1, 16, seed=seed))
    rows = []
    orig = model_mod.CausalSelfAttention.project_kv
    monkeypatch.setattr(model_mod.CausalSelfAttention, "project_kv",
                        lambda self, x, rope=None: rows.append(x.size(0)) or orig(self, x, rope))
    out = generate_equals_reference(m, idx, 16, thr)
    cfg = m.config
    cfg.early_exit, cfg.exit_threshold, cfg.exit_propagate = True, thr, True
    with torch.no_grad():
        d = m._trunk(out[:, :-1], early=True, threshold=thr, mode="threshold",
                     heads_on=True)["depth"][0].long().tolist()               # fed tokens
    deeper = [max(d[p + 1:], default=0) for p in range(len(d))]
    if share:
        want = sum(deeper[p] > d[p] for p in range(len(d)))
    else:
        want = sum(max(deeper[p] - d[p], 0) for p in range(len(d)))
    assert want > 0
    assert sum(rows) == want
    assert len(rows) < sum(rows)                     # batched: fewer projections than tokens
    if share:                                        # some exited tokens are never read
        assert want < sum(x < L for x in d)


def test_early_exit_batch_8_equals_masked_reference():
    """Batch 8, RoPE: decode steps where 2 to 6 of the 8 rows run past layer 1 (their keys
    gathered) equal the masked reference at every step."""
    m = make(pos_encoding="rope")
    idx = prompts(8, 4, seed=0)
    thr = layer1_median_confidence(m, idx, q=0.8)
    running = []
    orig = decode.KVSlot.attend

    def attend(self, q, k, v):
        if self.rows is not None and self.pos is None:
            running.append(self.rows.numel())
        return orig(self, q, k, v)
    decode.KVSlot.attend = attend
    try:
        got_logits = []
        out = m.generate(idx, 8, temperature=0, exit_threshold=thr, step_logits=got_logits)
    finally:
        decode.KVSlot.attend = orig
    ref, ref_logits = masked_reference(m, idx, 8, thr)
    assert torch.equal(out, ref)
    for g, r in zip(got_logits, ref_logits):
        torch.testing.assert_close(g, r)
    assert min(running) <= 2 and max(running) >= 6


def test_threshold_above_max_confidence_skips_the_heads(monkeypatch):
    """exit_threshold 1.01 can never fire on a probability (exits.never_exits): one head per
    step, the full-depth path and its tokens; at 1.0 (fires only at p = 1 exactly) every layer's
    head runs (the prompt's through _head_fn, the decode steps' through the kernel's head),
    with the same tokens and, bit for bit, the same logits as full depth."""
    m = make()
    idx = prompts(2, 5)
    n = {"heads": 0}
    orig, orig_kernel_head = decode._head_fn, decode._SharedPreLN.logits

    def count(fn):
        return lambda *a: n.__setitem__("heads", n["heads"] + 1) or fn(*a)
    monkeypatch.setattr(decode, "_head_fn", lambda model: count(orig(model)))
    monkeypatch.setattr(decode._SharedPreLN, "logits", count(orig_kernel_head))
    full_logits, exit_logits = [], []
    full = m.generate(idx, 6, temperature=0, step_logits=full_logits)
    assert n["heads"] == 6
    assert torch.equal(m.generate(idx, 6, temperature=0, exit_threshold=1.01), full)
    assert n["heads"] == 12
    assert torch.equal(m.generate(idx, 6, temperature=0, exit_threshold=1.0,
                                  step_logits=exit_logits), full)
    assert n["heads"] == 12 + 6 * L
    assert m.last_generate_stats["avg_exit_depth"] == L
    for a, b in zip(exit_logits, full_logits):
        assert torch.equal(a, b)


def test_decode_logits_include_lm_head_bias():
    """lm_head_bias: every decoding mode's logits equal model.forward's (which adds the bias)."""
    m = make(lm_head_bias=True)
    with torch.no_grad():
        m.lm_head.bias.normal_(0.0, 3.0)
    idx = prompts(2, 5)
    with torch.no_grad():
        ref = m(idx)[0][:, -1].float()
    for kw in ({}, {"exit_threshold": 1.0}):
        got = []
        m.generate(idx, 1, temperature=0, step_logits=got, **kw)
        torch.testing.assert_close(got[0], ref)


def test_never_firing_threshold_runs_every_layer_once_per_row():
    m = make()
    idx = prompts(2, 5)
    seen, hooks = count_mlp_rows(m)
    out = m.generate(idx, 6, temperature=0, exit_threshold=1.01)
    for h in hooks:
        h.remove()
    assert torch.equal(out, m.generate(idx, 6, temperature=0))
    assert seen == [10] * L + [2] * (L * 5)                   # prefill, then 5 single-token steps


def test_scalar_rules_equal_the_rules_on_fp32_values():
    """A rule's scalar form (the decoder's single-row check) decides as the rule does on fp32
    tensors, at the threshold itself and one ulp either side too."""
    thr = torch.tensor(0.2, dtype=torch.float32)
    c = torch.cat([torch.rand(2000, generator=torch.Generator().manual_seed(0)), thr[None],
                   torch.nextafter(thr, torch.tensor(0.0))[None],
                   torch.nextafter(thr, torch.tensor(1.0))[None]])
    scalar = [(n, r) for n, r in exits.EXIT_RULES.items() if r.scalar is not None]
    assert [n for n, _ in scalar] == ["threshold"]
    for _, rule in scalar:
        got = torch.tensor([rule.scalar(float(v), float(thr)) for v in c])
        assert torch.equal(got, rule(c, thr))
        assert got[-3:].tolist() == [True, False, True]


@pytest.mark.parametrize("name", sorted(n for n, f in exits.CONFIDENCES.items() if f.from_logits))
def test_confidence_from_logits_equals_the_measure(name):
    """A confidence's from_logits (the decoder's per-layer check) equals the measure itself on
    the head statistics the decoder would build (no targets)."""
    z = torch.randn(16, 50, generator=torch.Generator().manual_seed(0)) * 3
    cin = exits.ConfIn(decode._HeadStats(torch.softmax(z, dim=-1)))
    fn = exits.CONFIDENCES[name]
    assert torch.equal(fn.from_logits(z), fn(cin))


@pytest.mark.parametrize("name", sorted(n for n, f in exits.CONFIDENCES.items() if f.from_row))
def test_confidence_from_row_equals_from_logits(name):
    """A confidence's float form (from_row, the decoder's single-row check on CPU) is its fp32
    from_logits within 1e-6, for ordinary logits and for logits past exp's range (|z| > 700),
    where the shifted form takes over."""
    fn = exits.CONFIDENCES[name]
    z = torch.randn(64, 65, generator=torch.Generator().manual_seed(1)) * 4
    z = torch.cat([z, z[:4] + 800.0, z[4:8] - 800.0, torch.zeros(1, 65)])
    want = fn.from_logits(z)
    got = torch.tensor([fn.from_row(row) for row in z.double().tolist()], dtype=torch.float64)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want.double(), rtol=0, atol=1e-6)


def test_from_row_needs_from_logits():
    with pytest.raises(ValueError, match="from_row needs from_logits"):
        exits.register_confidence("row-only", from_row=lambda zs: 1.0)
    assert "row-only" not in exits.CONFIDENCES


@pytest.mark.parametrize("R", [1, 3])
@pytest.mark.parametrize("confidence", ["max-prob", "top2-margin"])
def test_fired_decides_as_the_fp32_rule_at_the_threshold_itself(confidence, R):
    """_Measure.fired (float forms, the batch-max pre-check) against the fp32 rule on tensors,
    with the threshold set to a row's own fp32 confidence and one ulp either side, where a
    float64 value may land on the other side of it: the same rows fire."""
    m = make(scale=1.0, confidence=confidence)
    fn = exits.CONFIDENCES[confidence]
    rule = exits.EXIT_RULES["threshold"]
    z = torch.randn(40 * R, V, generator=torch.Generator().manual_seed(3)) * 3
    checked = 0
    for rows in z.split(R):
        c = fn.from_logits(rows)
        for thr in (c[0], torch.nextafter(c[0], torch.tensor(0.0)),
                    torch.nextafter(c[0], torch.tensor(2.0))):
            measure = decode._exit_check(m, rule, float(thr), z.device)
            want = rule(c, measure.threshold).nonzero()[:, 0].tolist()
            assert measure.fired(0, None, None, rows) == want
            checked += bool(want)
    assert 0 < checked < 40 * 3


# ----------------------------------------------------------------------------------------------
# the decode-step kernel of a shared pre-ln block


def kernel_type(m):
    return type(decode.kernel_for(m, decode._head_fn(m)))


def test_kernel_for_accepts_only_shared_pre_ln_with_gpt2_attention():
    assert kernel_type(make()) is decode._SharedPreLN
    assert kernel_type(make(bias=False, pos_encoding="rope", lm_head_bias=True)) is decode._SharedPreLN
    assert kernel_type(make(share=False)) is decode._Blocks
    assert kernel_type(make(block_type="res-attn2")) is decode._Blocks
    assert kernel_type(make(attention="no-c-proj")) is decode._Blocks
    assert kernel_type(make().train()) is decode._Blocks


def test_kernel_not_used_when_the_block_was_edited(monkeypatch):
    """A researcher's edit of PreLNBlock.forward (here: the MLP branch halved) is what generate
    decodes: the kernel's probe disagrees, it warns, and decoding uses the Block modules."""
    m = make()
    assert kernel_type(m) is decode._SharedPreLN
    orig = model_mod.PreLNBlock.forward

    def edited(self, x, rope=None, caches=None):
        mid = x + self.attn(self.ln_1(x), rope, self._slot(caches, 0))
        return mid + 0.5 * self.mlp(self.ln_2(mid)), mid
    monkeypatch.setattr(model_mod.PreLNBlock, "forward", edited)
    with pytest.warns(UserWarning, match="disagrees with the model's block"):
        assert kernel_type(m) is decode._Blocks
    idx = prompts(2, 4)
    with pytest.warns(UserWarning):                 # reference: model.forward, the edit
        generate_equals_reference(m, idx, 8, generated_median_confidence(m, idx, 8))


@pytest.mark.parametrize("edit", ["instance forward", "attention hook"])
def test_kernel_not_used_when_the_probed_block_is_edited_later(edit):
    """After the probe agreed (make() probes), an edit the block's class does not show: its
    instance's own forward (the MLP branch halved), or a forward hook on its attention that
    scales the output. Generate decodes the edited model."""
    m = make()
    blk = m.block(0)
    if edit == "instance forward":
        def edited(x, rope=None, caches=None):
            mid = x + blk.attn(blk.ln_1(x), rope, blk._slot(caches, 0))
            return mid + 0.5 * blk.mlp(blk.ln_2(mid)), mid
        blk.forward = edited
    else:
        blk.attn.register_forward_hook(lambda mod, inp, out: 0.5 * out)
    idx = prompts(2, 4)
    got = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = m.generate(idx, 6, temperature=0, step_logits=got)
    # an instance forward: the probe reruns and disagrees (a warning); a hook on a module the
    # kernel bypasses: no kernel at all (the hook sees every decode step)
    assert [str(w.message)[:57] for w in caught] == (
        ["decode: the shared pre-ln kernel disagrees with the model"] if edit == "instance forward"
        else [])
    if edit == "attention hook":
        assert kernel_type(m) is decode._Blocks
    ref, ref_logits = masked_reference(m, idx, 6, None)         # model.forward: the edit
    assert torch.equal(out, ref)
    for g, r in zip(got, ref_logits):
        torch.testing.assert_close(g, r)


def test_kernel_probe_runs_once_per_model_state(monkeypatch):
    """The probe reruns only when the parameters change in place (an optimizer step, a
    load_state_dict) or the block's code does, not at every generate."""
    m = make()
    n = {"probes": 0}
    orig = decode._SharedPreLN.agrees
    monkeypatch.setattr(decode._SharedPreLN, "agrees",
                        lambda self: n.__setitem__("probes", n["probes"] + 1) or orig(self))
    idx = prompts(1, 3)
    m.generate(idx, 2, temperature=0)
    m.generate(idx, 2, temperature=0, exit_threshold=0.5)
    assert n["probes"] == 0                          # make() probed this state already
    with torch.no_grad():
        m.transformer.ln_f.weight.mul_(1.0)          # in place: a new version
    m.generate(idx, 2, temperature=0)
    m.generate(idx, 2, temperature=0)
    assert n["probes"] == 1


def test_kernel_decodes_a_model_built_under_inference_mode(monkeypatch):
    """Parameters that are inference tensors (a model built or loaded under
    torch.inference_mode) have no version counter for the probe's key: such a model is probed
    at every generate and decodes through the kernel, equal to the Block modules."""
    with torch.inference_mode():
        m = affine_lns(make(scale=1.0, pos_encoding="rope"))
    assert m.lm_head.weight.is_inference()
    idx = prompts(2, 3, seed=4)
    thr = generated_median_confidence(m, idx, 8)
    got, want = kernel_and_blocks(m, idx, 8, monkeypatch, temperature=0, exit_threshold=thr)
    assert_same_decode(got, want)
    assert 1.0 < got[2] < L


def affine_lns(m, seed=0):
    """Random LayerNorm gains N(1, 0.3) and biases N(0, 0.3) (init's 1 and 0 make the kernel's
    ln_1 / ln_f folds exact whatever they do)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for ln in m.modules():
            if isinstance(ln, torch.nn.LayerNorm) and ln.weight is not None:
                ln.weight.copy_(1.0 + 0.3 * torch.randn(ln.weight.shape, generator=g))
                if ln.bias is not None:
                    ln.bias.copy_(0.3 * torch.randn(ln.bias.shape, generator=g))
    return m


def kernel_and_blocks(m, idx, n, monkeypatch, seed=0, **kw):
    """generate(idx, n, **kw) through the kernel (asserted: kernel_for gave a _SharedPreLN), then
    through the Block modules (decode._Blocks), torch's RNG seeded with `seed` before each and
    a generator seeded with it -> two (tokens, step logits, avg exit depth)."""
    runs, used, kernel_for = [], [], decode.kernel_for

    def kernel(model, head):
        layers = kernel_for(model, head)
        used.append(type(layers))
        return layers
    for layers in (kernel, lambda model, head: decode._Blocks(model, head)):
        with monkeypatch.context() as mp:
            mp.setattr(decode, "kernel_for", layers)
            torch.manual_seed(seed)
            lg = []
            out = m.generate(idx, n, step_logits=lg, generator=torch.Generator().manual_seed(seed),
                             **kw)
        runs.append((out, lg, m.last_generate_stats["avg_exit_depth"]))
    assert used == [decode._SharedPreLN]          # the kernel decoded (its probe agreed)
    return runs


def assert_same_decode(a, b):
    """Tokens and exit depths equal, every step's logits within fp32 tolerance."""
    assert torch.equal(a[0], b[0])
    assert a[2] == b[2]
    assert len(a[1]) == len(b[1]) > 0
    for x, y in zip(a[1], b[1]):
        torch.testing.assert_close(x, y)      # fp32: atol 1e-5, rtol 1.3e-6


@pytest.mark.parametrize("pos_encoding,bias,B,kw", [
    ("learned", True, 1, {}), ("rope", True, 3, {}), ("rope", False, 1, {}),
    ("learned", False, 4, {}),
    ("sinusoidal", True, 2, {"ln_learnable": False, "activation": "relu"})])
def test_kernel_equals_block_modules(pos_encoding, bias, B, kw, monkeypatch):
    """Shared pre-ln with random LayerNorm affines (what the kernel folds; or none with
    ln_learnable=False), any MLP activation: decoding through the kernel (full depth, early
    exit with rows leaving at different depths and their K/V written at exit, speculative
    drafts; greedy and sampled with the same generator) gives the tokens of decoding through
    the Block modules, every step's logits within fp32 tolerance; the speculative greedy
    tokens are full depth's."""
    m = affine_lns(make(pos_encoding=pos_encoding, bias=bias, lm_head_bias=bias, scale=1.0, **kw))
    if bias:
        with torch.no_grad():
            m.lm_head.bias.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(1))
    assert kernel_type(m) is decode._SharedPreLN
    idx = prompts(B, 3, seed=4)
    thr = generated_median_confidence(m, idx, 14)
    blocks = {"n": 0}
    orig_run = decode._Blocks.run

    def run(self, *a):
        blocks["n"] += type(self) is decode._Blocks
        return orig_run(self, *a)
    monkeypatch.setattr(decode._Blocks, "run", run)
    outs = []
    spec = {"draft_layers": 2, "draft_tokens": 3}
    for temp in (0.0, 2.0):
        for mode in ({}, {"exit_threshold": thr}, spec):
            got, want = kernel_and_blocks(m, idx, 14, monkeypatch, temperature=temp, top_k=40,
                                          **mode)
            assert_same_decode(got, want)
            outs.append(got[0])
            if mode.get("exit_threshold"):
                assert 1.0 < got[2] < L
    assert torch.equal(outs[2], outs[0])      # speculative greedy = full-depth greedy
    assert not torch.equal(outs[3], outs[0])  # sampled
    assert blocks["n"] > 0            # the reference ran the Block modules' decode steps


def _confidence_quantile(m, idx, n, q):
    """Quantile q of the layer 1..L-1 config.confidence along the full-depth greedy continuation."""
    with torch.no_grad():
        r = m._trunk(m.generate(idx, n, temperature=0), heads_on=True)
    return between(torch.cat([o.confidence.flatten() for o in r["layers"][:-1]]), q)


@pytest.mark.parametrize("mode", ["threshold", "sample"])
@pytest.mark.parametrize("confidence", sorted(exits.CONFIDENCES))
def test_kernel_every_confidence_equals_block_modules(confidence, mode, monkeypatch):
    """Every confidence (with from_logits or through ConfIn: logit statistics, the previous
    layer's logits, the argmax history, the residual stream, the exit classifier), under the
    threshold rule at its 0.85 quantile (rows exit at different depths) and under the random
    "sample" rule (same seed): the kernel's tokens, logits and exit depths are the Block
    modules'."""
    m = affine_lns(make(scale=3.0, pos_encoding="rope", confidence=confidence, argmax_stable_k=1,
                        layer_heads=confidence == "learned"))
    if confidence == "learned":
        with torch.no_grad():
            m.exit_classifier.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(2))
    idx = prompts(3, 4, seed=1)
    m.config.early_exit, m.config.exit_mode = True, mode
    m.config.exit_threshold = (0.5 if confidence == "argmax-stable" else
                              _confidence_quantile(m, idx, 12, 0.85))
    got, want = kernel_and_blocks(m, idx, 12, monkeypatch, seed=3, temperature=0)
    assert_same_decode(got, want)
    assert (1.0 < got[2] < L) if mode == "threshold" else (1.0 <= got[2] < L)


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("confidence", sorted(n for n, f in exits.CONFIDENCES.items() if not f.head))
def test_head_free_confidence_runs_the_head_only_where_tokens_exit(confidence, share,
                                                                    monkeypatch):
    """A confidence registered head=False (state-cosine, learned) decides without the layer's
    head: decode steps run the head once per token (where it exits or at the last layer),
    none at the layers it passes, and the result is the masked reference's."""
    m = affine_lns(make(scale=3.0, share=share, confidence=confidence,
                        layer_heads=confidence == "learned"))
    if confidence == "learned":
        with torch.no_grad():
            m.exit_classifier.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(2))
    idx = prompts(1, 1, seed=1)
    thr = _confidence_quantile(m, idx, 10, 0.85)
    rows = {"head": 0, "kernel": 0}
    orig_head, orig_kernel = decode._head_fn, decode._SharedPreLN.logits

    def head_fn(model):
        h = orig_head(model)
        return lambda x: rows.__setitem__("head", rows["head"] + x[..., 0].numel()) or h(x)
    monkeypatch.setattr(decode, "_head_fn", head_fn)
    monkeypatch.setattr(decode._SharedPreLN, "logits", lambda self, x: rows.__setitem__(
        "kernel", rows["kernel"] + 1) or orig_kernel(self, x))
    generate_equals_reference(m, idx, 10, thr)
    assert 1.0 < m.last_generate_stats["avg_exit_depth"] < L
    assert rows == {"head": 10, "kernel": 0}       # one head row per token, one-token prompt


@pytest.mark.parametrize("depth", [2, 6])
def test_kernel_at_test_time_depth_equals_masked_reference(depth):
    """generate(depth=d) on a shared block (recurrent test-time depth, d != n_layer): the kernel
    runs d layers, full depth and early exit equal to the masked reference at depth d. The
    threshold splits the layer-1 confidences: a row's tokens exiting at layer 1 are read by its
    later tokens at depths up to d - 1 (at d = 6 their K/V must reach depth 6, not n_layer)."""
    m = affine_lns(make(scale=3.0, pos_encoding="rope"))
    assert kernel_type(m) is decode._SharedPreLN
    idx = prompts(2, 3, seed=8)
    with m.at_depth(depth), torch.no_grad():
        x, rope = m._embed(m.generate(idx, 10, temperature=0))
        h = m.transformer.ln_f(m.block(0)(x, rope)[0])
        thr = between(F.softmax(m.lm_head(h), -1).amax(-1), 0.5)
        refs = [masked_reference(m, idx, 10, t) for t in (None, thr)]
    for t, (ref, ref_logits) in zip((None, thr), refs):
        got = []
        assert torch.equal(m.generate(idx, 10, temperature=0, exit_threshold=t, depth=depth,
                                      step_logits=got), ref)
        for g, r in zip(got, ref_logits):
            torch.testing.assert_close(g, r)
        d = m.last_generate_stats["avg_exit_depth"]
        assert d == depth if t is None else 1.0 < d < depth
    assert m.config.n_layer == L


def test_kernel_whole_batch_exits_at_layer_1():
    """Threshold 0: every row exits at layer 1 in one go (prompt and decode steps), its K/V
    written at every deeper depth: equal to the masked reference."""
    m = affine_lns(make(scale=3.0, pos_encoding="rope"))
    assert kernel_type(m) is decode._SharedPreLN
    idx = prompts(3, 3, seed=6)
    generate_equals_reference(m, idx, 8, 0.0)
    assert m.last_generate_stats["avg_exit_depth"] == 1.0


def test_confidence_without_from_logits_goes_through_confin(monkeypatch):
    """max-prob registered again without from_logits: the decoder hands it a ConfIn at every
    check and decodes exactly as max-prob's from_logits does."""
    seen = []

    def slow_max_prob(out):
        seen.append(type(out))
        return out.p_max
    for reg in (exits.CONFIDENCES, exits.CONFIDENCE_MAX):
        monkeypatch.setitem(reg, "max-prob-confin", None)             # removed again after
    exits.register_confidence("max-prob-confin")(slow_max_prob)
    assert slow_max_prob.from_logits is None
    m = make(scale=1.0)
    idx = prompts(3, 3, seed=4)
    thr = generated_median_confidence(m, idx, 10)
    runs = []
    for name in ("max-prob", "max-prob-confin"):
        m.config.confidence = name
        lg = []
        runs.append((m.generate(idx, 10, temperature=0, exit_threshold=thr, step_logits=lg), lg,
                     m.last_generate_stats["avg_exit_depth"]))
    assert seen and set(seen) == {exits.ConfIn}
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][2] == runs[1][2]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    assert 1.0 < runs[0][2] < L


@pytest.mark.parametrize("low", ["autocast", "bf16"])
def test_decode_in_bfloat16_runs_and_agrees(low, monkeypatch):
    """torch.autocast(cpu, bfloat16) and a bf16 model, kernel and Block modules: early exit with
    rows (and prompt tokens) exiting at different depths runs (the exited tokens' K/V, bf16
    under autocast, go into the model-dtype cache); full depth agrees with fp32 decoding to
    bf16 tolerance."""
    m = affine_lns(make(scale=1.0, pos_encoding="rope"))
    idx = prompts(3, 4, seed=1)
    thr = generated_median_confidence(m, idx, 10)
    want = []
    m.generate(idx, 10, temperature=0, step_logits=want)
    ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if low == "autocast"
           else contextlib.nullcontext())
    if low == "bf16":
        m = m.to(torch.bfloat16)
    with ctx:
        full = kernel_and_blocks(m, idx, 10, monkeypatch, temperature=0)
        early = kernel_and_blocks(m, idx, 10, monkeypatch, temperature=0, exit_threshold=thr)
    for out, lg, depth in full:
        for g, w in zip(lg, want):
            assert g.dtype == torch.float32
            torch.testing.assert_close(g, w, atol=0.15, rtol=0.05)
    for out, lg, depth in early:
        assert out.shape == (3, 14) and len(lg) == 10 and 1.0 < depth < L

# ----------------------------------------------------------------------------------------------
# self-speculative decoding


@pytest.mark.parametrize("d,k,share", [(1, 1, True), (1, 4, True), (3, 8, True), (2, 3, True),
                                       (2, 3, False)])
def test_speculative_greedy_identical_to_full_depth(d, k, share):
    """Greedy tokens identical to full-depth greedy for 24 prompts (batch 1 and batch 4), every
    position, including steps past block_size; the logits each token came from match too."""
    m = make(share=share, scale=2.0)
    for seed in range(6):
        for B in (1, 4):
            idx = prompts(B, 3 + seed, seed=seed)
            n = 36 - idx.size(1) if seed == 5 else 20            # seed 5 runs past block_size
            full_logits, spec_logits = [], []
            full = m.generate(idx, n, temperature=0, step_logits=full_logits)
            spec = m.generate(idx, n, temperature=0, draft_layers=d, draft_tokens=k,
                              step_logits=spec_logits)
            assert torch.equal(spec, full), (seed, B)
            assert len(spec_logits) == n
            for a, b in zip(spec_logits, full_logits):
                torch.testing.assert_close(a, b)
    st = m.last_generate_stats
    assert 0.0 <= st["acceptance_rate"] <= 1.0 and st["tokens_per_verify"] >= 1.0


def test_speculative_greedy_accepts_when_draft_equals_model():
    """A draft that always agrees (blocks past layer 1 add nothing: zeroed output projections)
    accepts every drafted token: k + 1 tokens per verification."""
    m = make(scale=1.0)
    with torch.no_grad():
        for blk in m.transformer.h:
            blk.attn.c_proj.weight.zero_(); blk.attn.c_proj.bias.zero_()
            blk.mlp.c_proj.weight.zero_(); blk.mlp.c_proj.bias.zero_()
    idx = prompts(1, 4)
    out = m.generate(idx, 21, temperature=0, draft_layers=2, draft_tokens=4)
    st = m.last_generate_stats
    assert torch.equal(out, m.generate(idx, 21, temperature=0))
    assert st["acceptance_rate"] == 1.0
    assert st["tokens_per_verify"] == 5.0                       # 1 from the prompt + 4 x 5


def _exact_marginals(m, prompt, n, temperature):
    """Exact distribution of each of the first n new tokens (n small, tiny vocab): list of (V,)."""
    Vm = m.config.vocab_size
    seqs, w = prompt.clone(), torch.ones(1, dtype=torch.float64)
    marg = []
    for _ in range(n):
        with torch.no_grad():
            logits, _ = m(seqs)
        p = F.softmax(logits[:, -1].double() / temperature, -1)            # (S, V)
        joint = w[:, None] * p
        marg.append(joint.sum(0))
        w = joint.flatten()
        seqs = torch.cat([seqs.repeat_interleave(Vm, 0),
                          torch.arange(Vm).repeat(seqs.size(0))[:, None]], dim=1)
    return marg


def _chi2(counts, probs):
    exp = probs * counts.sum()
    return float(((counts - exp) ** 2 / exp).sum())


def test_speculative_accept_rule_samples_the_verifier():
    """speculative_accept on 200,000 rows, vocab 5, k = 2, drafts drawn from q far from p: the
    1st, 2nd and 3rd emitted tokens (draft kept, residual resample, or the bonus from p_2) follow
    p_0, p_1, p_2 (chi-square, df 4, 99.9 % point 18.5); the drafts themselves do not."""
    g = torch.Generator().manual_seed(0)
    B, k, Vt = 200_000, 2, 5
    p = F.softmax(torch.randn(k + 1, Vt, generator=g) * 1.5, -1)
    q = F.softmax(torch.randn(k, Vt, generator=g) * 1.5, -1)
    drafts = torch.stack([torch.multinomial(q[j], B, replacement=True, generator=g)
                          for j in range(k)], 1)
    n_ok, own = decode.speculative_accept(p.expand(B, -1, -1), q.expand(B, -1, -1), drafts, g)
    emitted = torch.cat([drafts, torch.full((B, 1), -1)], 1)
    emitted[torch.arange(B), n_ok] = own                     # row: drafts[:n_ok] + own
    for j in range(k + 1):
        reached = n_ok >= j                                   # rows that emitted a j-th token
        counts = torch.bincount(emitted[reached, j], minlength=Vt).double()
        assert _chi2(counts, p[j].double()) < 18.5, (j, counts / counts.sum(), p[j])
    assert _chi2(torch.bincount(drafts[:, 0], minlength=Vt).double(), p[0].double()) > 1000
    assert 0.1 < float((n_ok == k).float().mean()) < 0.9     # all three paths taken


def test_speculative_sampling_matches_full_model_distribution():
    """End to end: vocab 6, 3 layers, draft 1 layer x 2 tokens, temperature 1, 3000 rows of one
    prompt in one call (each row keeps the batch's shortest accepted prefix: still exact per row).
    Each of the 4 new tokens' marginal fits the full model's exact one (chi-square, df 5,
    99.9 % point 20.5); sampling from the 1-layer draft alone does not."""
    m = make(n_layer=3, vocab=6, scale=3.0, seed=4)
    with torch.no_grad():
        m.transformer.wte.weight.mul_(0.3)
    prompt = prompts(1, 3, seed=5, vocab=6).expand(3000, 3).contiguous()
    exact = _exact_marginals(m, prompt[:1], 4, 1.0)
    g = torch.Generator().manual_seed(0)
    spec = m.generate(prompt, 4, temperature=1.0, draft_layers=1, draft_tokens=2, generator=g)
    draft = m.generate(prompt, 4, temperature=1.0, exit_threshold=0.0, generator=g)
    chi = [[_chi2(torch.bincount(out[:, 3 + j], minlength=6).double(), exact[j])
            for j in range(4)] for out in (spec, draft)]
    assert max(chi[0]) < 20.5, chi
    assert max(chi[1]) > 30.0, chi


def test_speculative_sampling_batch_is_per_row_exact_and_top_k():
    """Batch 4 with top_k 1 is greedy (the accept test then accepts exactly the agreeing drafts);
    the bonus / residual paths keep shapes and prompt."""
    m = make(scale=2.0)
    idx = prompts(4, 5, seed=7)
    g = torch.Generator().manual_seed(0)
    greedy = m.generate(idx, 15, temperature=0)
    assert torch.equal(m.generate(idx, 15, top_k=1, draft_layers=2, draft_tokens=3, generator=g),
                       greedy)
    out = m.generate(idx, 15, temperature=0.9, top_k=10, draft_layers=1, draft_tokens=5,
                     generator=g)
    assert out.shape == (4, 20) and torch.equal(out[:, :5], idx)


@pytest.mark.parametrize("kw,msg", [
    (dict(draft_layers=0), "draft_layers must be an int in 1..3"),
    (dict(draft_layers=4), "draft_layers must be an int in 1..3"),
    (dict(draft_layers=2, draft_tokens=0), "draft_tokens must be an int >= 1"),
    (dict(draft_layers=2, exit_threshold=0.5), "are exclusive"),
    (dict(temperature=-1.0), "temperature must be"),
    (dict(top_k=0), "top_k must be"),
])
def test_generate_rejects_bad_arguments(kw, msg):
    m = make()
    with pytest.raises(ValueError, match=msg):
        m.generate(prompts(1, 3), 4, **kw)


@pytest.mark.parametrize("shape", [(0, 3), (2, 0), (3,)])
def test_generate_rejects_an_empty_or_1d_prompt(shape):
    msg = f"idx must be (B, T) token ids with B, T >= 1, got shape {shape}"
    with pytest.raises(ValueError, match=re.escape(msg)):
        make().generate(torch.zeros(shape, dtype=torch.long), 2, temperature=0)


# ----------------------------------------------------------------------------------------------
# the decode benchmark (bench/decode_bench.py)


def _decode_bench():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "bench"))
    import decode_bench
    return decode_bench


def test_decode_bench_summarize_paired_median_and_ratio_of_medians():
    decode_bench = _decode_bench()

    def case(dec, paired, e2e, cpu, depth):
        return {"runs": {"dec_tok_s": dec, "first_ms": [5.0, 1.0, 3.0]}, "depth": depth,
                "paired": {"dec_tok_s": paired, "tok_s": e2e, "cpu_tok_s": cpu}}
    res = {"full": case([10.0, 20.0, 30.0], [1.0] * 3, [1.0] * 3, [1.0] * 3, 4.0),
           "exit": case([30.0, 20.0, 90.0], [1.0, 3.0, 1.5], [1.2, 1.1, 1.3], [2.5, 2.0, 3.0],
                        2.0)}
    out = decode_bench.summarize(res, n_layer=4)
    assert out["exit"]["median"] == 30.0 and (out["exit"]["min"], out["exit"]["max"]) == (20, 90)
    assert out["exit"]["ratio_of_medians"] == 30.0 / 20.0
    assert out["exit"]["speedup"] == 1.5                     # median of the paired ratios
    assert (out["exit"]["speedup_min"], out["exit"]["speedup_max"]) == (1.0, 3.0)
    assert out["exit"]["e2e_speedup"] == 1.2 and out["exit"]["cpu_speedup"] == 2.5
    assert out["exit"]["first_ms"] == 3.0
    assert out["exit"]["ideal"] == 2.0 and out["exit"]["of_ideal"] == 0.75


def test_decode_bench_paired_ratio_cancels_a_linear_drift(monkeypatch):
    """A machine slowing down linearly run after run: each case's paired ratio (its tok/s over
    the mean of the full-depth runs before and after it) is its true speed ratio, for every
    metric; full depth runs between any two cases, their order rotating."""
    decode_bench = _decode_bench()
    true = {"full": 100.0, "a": 150.0, "b": 300.0}
    log = []

    def time_generate(model, prompts, n_new, kw):
        log.append(kw["name"])
        speed = true[kw["name"]] * (1.0 - 0.01 * len(log))           # drift: -1 % per run
        return None, {"dec_tok_s": speed * 3, "tok_s": speed, "cpu_tok_s": speed / 2,
                      "first_ms": 1.0}, {"decode_exit_depth": 4.0}

    class Model:
        def generate(self, *a, **kw):
            pass
    monkeypatch.setattr(decode_bench, "time_generate", time_generate)
    cases = {n: {"name": n} for n in true}
    res = decode_bench.summarize(decode_bench.measure_interleaved(Model(), None, 8, cases, 4), 8)
    assert log[:5] == ["full", "a", "full", "b", "full"] and log[5:10] == ["full", "b", "full",
                                                                            "a", "full"]
    assert len(log) == 4 * 5
    for n in ("a", "b"):
        for m in decode_bench.METRICS:
            assert res[n]["paired"][m] == pytest.approx([true[n] / 100.0] * 4, rel=1e-12)
        for key in ("speedup", "e2e_speedup", "cpu_speedup"):
            assert res[n][key] == pytest.approx(true[n] / 100.0, rel=1e-12)


def test_generate_runs_in_inference_mode_and_returns_ordinary_tensors():
    """Decoding runs under torch.inference_mode (a hook on a block sees it), yet the tokens and
    step_logits it hands back are ordinary tensors: they can be saved for backward (an
    inference tensor as embedding indices raises there)."""
    model = make(n_layer=2)
    seen = []
    model.block(0).register_forward_hook(lambda *a: seen.append(torch.is_inference_mode_enabled()))
    lg = []
    out = model.generate(prompts(2, 3), 4, temperature=0, step_logits=lg)
    assert seen and all(seen)
    assert not out.is_inference() and not any(t.is_inference() for t in lg) and len(lg) == 4
    loss = model.transformer.wte(out).sum() + sum(t.sum() for t in lg)
    loss.backward()                                 # would raise on inference tensors
    assert model.transformer.wte.weight.grad is not None
    with torch.inference_mode():
        leaked = model.generate(prompts(2, 3), 1, temperature=0)
    with pytest.raises(RuntimeError, match="[Ii]nference tensors"):
        model.transformer.wte(leaked).sum().backward()


def test_generate_times_the_first_token_and_the_decode_phase_apart():
    """last_generate_stats: first_token_s covers the prompt, decode_tokens_per_s the tokens
    after it (a prompt 16x longer costs the first token, not the decode phase's tok/s count)
    and decode_exit_depth their exit depth."""
    model = make(n_layer=4)
    idx = torch.zeros(2, 3, dtype=torch.long)
    model.generate(idx, 5, temperature=0, exit_threshold=0.0)          # exits at layer 1
    st = model.last_generate_stats
    assert st["new_tokens"] == 10 and st["decode_exit_depth"] == 1.0
    assert st["first_token_s"] > 0 and st["decode_tokens_per_s"] > 0
    total = 10 / st["tokens_per_s"]
    assert st["first_token_s"] + 8 / st["decode_tokens_per_s"] == pytest.approx(total, rel=1e-6)
    model.generate(idx, 1, temperature=0)
    assert math.isnan(model.last_generate_stats["decode_tokens_per_s"])
    assert math.isnan(model.last_generate_stats["decode_exit_depth"])
    model.generate(idx, 0, temperature=0)
    assert math.isnan(model.last_generate_stats["first_token_s"])
    # the first token's exit depth (a 1-token call) differs from the decode phase's here, and
    # the whole call's mean is theirs weighted by token count: decode_exit_depth leaves it out
    idx = prompts(2, 3)
    model.generate(idx, 1, temperature=0, exit_threshold=0.2)
    first = model.last_generate_stats["avg_exit_depth"]
    model.generate(idx, 5, temperature=0, exit_threshold=0.2)
    st = model.last_generate_stats
    assert first != st["decode_exit_depth"] and 1.0 < st["decode_exit_depth"] < 4.0
    assert (first + 4 * st["decode_exit_depth"]) / 5 == pytest.approx(st["avg_exit_depth"])
    model.generate(idx, 5, temperature=0, draft_layers=1)          # speculation: full depth
    assert model.last_generate_stats["decode_exit_depth"] == 4.0


def test_decode_bench_rotation_puts_every_case_in_every_slot():
    decode_bench = _decode_bench()
    names = ["full", "exit@1", "exit@0.2", "spec 1x8"]
    orders = [decode_bench.rotation(names, r) for r in range(8)]
    assert orders[0] == names and orders[1] == ["exit@1", "exit@0.2", "spec 1x8", "full"]
    assert orders[4] == names
    for slot in range(4):
        assert sorted(o[slot] for o in orders[:4]) == sorted(names)


def test_decode_bench_depth_matched_interpolates_time_per_token():
    decode_bench = _decode_bench()
    res = {"full": {"depth": 8.0, "speedup": 1.0}, "depth 2": {"depth": 2.0, "speedup": 4.0},
           "depth 3": {"depth": 3.0, "speedup": 2.0}, "exit@0.2": {"depth": 2.5, "speedup": 9.0}}
    assert decode_bench.depth_matched(res, 2.5) == 1.0 / (0.25 + 0.5 * 0.25)
    assert decode_bench.depth_matched(res, 3.0) == 2.0
    assert decode_bench.depth_matched(res, 3.5) is None


def test_decode_bench_out_of_order_beyond_spread():
    """A deeper threshold faster than a shallower one counts only when their per-round ratio
    ranges do not overlap."""
    decode_bench = _decode_bench()

    def case(depth, lo, hi):
        return {"depth": depth, "speedup_min": lo, "speedup_max": hi}
    res = {"full": case(8, 1, 1), "exit@0.5": case(6, 1.1, 1.3), "exit@0.3": case(3, 1.2, 2.0)}
    assert decode_bench.out_of_order(res) == []                       # overlapping: in order
    res["exit@0.2"] = case(2, 0.9, 1.15)          # slower than exit@0.3, overlaps exit@0.5
    assert decode_bench.out_of_order(res) == [("exit@0.3", "exit@0.2")]


def test_decode_bench_step_pairs():
    """step_pairs: `pairs` ratios of a full-depth step's time over an early-exit step's at one
    cache position; None for a threshold that can never fire (no check to time) or that fires
    at that step (different work)."""
    decode_bench = _decode_bench()
    m = make(scale=1.0)
    idx = prompts(2, 5, seed=1)
    ratios = decode_bench.step_pairs(m, idx, 1.0, 7)
    assert len(ratios) == 7 and all(0 < r < math.inf for r in ratios)
    assert decode_bench.step_pairs(m, idx, 1.01, 7) is None
    assert decode_bench.step_pairs(m, idx, 0.0, 7) is None             # fires at layer 1


def test_decode_bench_end_to_end(tmp_path, capsys):
    import bench
    from test_eval_exit import write_ckpt, write_data
    ckpt = write_ckpt(tmp_path / "log" / "r" / "ckpt_000000.pt")
    data = write_data(tmp_path / "data")
    bench.main(["--decode", "--ckpt", str(ckpt), "--data", str(data), "--prompt-len", "4",
                "--new-tokens", "4", "--rounds", "2", "--spec", "1x2", "--thresholds", "1.01,1",
                "--step-pairs", "3",
                "--depths", "1,2",
                "--val-batches", "1", "--batch-sizes", "1,2", "--out", str(tmp_path / "out")])
    (md,) = (tmp_path / "out").glob("decode-cpu-*.md")
    text = md.read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| full") or ln.startswith("| spec")]
    assert len(rows) == 6                                     # batch 1 and 2
    assert all(ln.startswith("| full | 3.00 |") and "**1.00x**" in ln for ln in rows[::3])
    assert all(ln.startswith("| full (Block modules) | 3.00 |") for ln in rows[1::3])
    assert all(ln.rstrip().endswith("| yes |") for i, ln in enumerate(rows) if i % 3)  # = full
    assert "## batch 2" in text and "wrote" in capsys.readouterr().out
    assert text.count("| depth 1 | 1.00 |") == 2 and text.count("| depth 2 | 2.00 |") == 2
    assert "- batch 1, thresholds that never fired: exit@1.01 " in text
    assert ("- batch 2, the same, decode steps alternated with full depth's 3 times in one "
            "process (median ratio, middle half): exit@1 ") in text     # not exit@1.01: no check


def test_kernel_decodes_the_same_bits_every_call():
    """Identical early-exit generates give the same logits bit for bit, the first one too,
    whose kernel also ran the probe. (Once the probe's head call left the first generate's
    steps starting on the other of two head buffers carved from one allocation, the second
    644 bytes in, and its logits differed in the last bits from the later calls'.)"""
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=32, vocab_size=65, n_layer=L, n_head=2, n_embd=32,
                      share_weights=True)).eval()
    idx = prompts(1, 5, seed=2, vocab=65)
    runs = []
    for _ in range(3):
        lg = []
        runs.append((m.generate(idx, 12, temperature=0, exit_threshold=1.0, step_logits=lg), lg))
        assert m.last_generate_stats["avg_exit_depth"] == L          # checked, never fired
    assert kernel_type(m) is decode._SharedPreLN
    for toks, lg in runs[1:]:
        assert torch.equal(toks, runs[0][0])
        assert all(torch.equal(a, b) for a, b in zip(lg, runs[0][1]))


@pytest.mark.parametrize("confidence", ["max-prob", "top2-margin"])
def test_fired_nan_row_does_not_block_other_rows(confidence):
    """The batch-max pre-check with one row's confidence NaN (its max is NaN): the other rows
    are decided by the fp32 rule, so a row that clears the threshold still exits."""
    m = make(scale=1.0, confidence=confidence)
    rule = exits.EXIT_RULES["threshold"]
    z = torch.zeros(2, V)
    z[0] = float("nan")
    z[1, 3] = 20.0                                  # row 1: confidence ~1
    measure = decode._exit_check(m, rule, 0.5, z.device)
    want = rule(exits.CONFIDENCES[confidence].from_logits(z), measure.threshold)
    assert want.nonzero()[:, 0].tolist() == [1]
    assert measure.fired(0, None, None, z) == [1]
    assert measure.fired(0, None, None, z[:1]) == []          # a lone NaN row: not fired


@pytest.mark.parametrize("share", [True, False])
def test_nan_row_leaves_other_rows_decoding_as_the_reference(share):
    """Batch 2 where row 0's prompt token has an inf embedding (its states and logits are NaN
    from layer 1 on): row 1 decodes exactly as the masked reference and as it does alone,
    exiting early (a NaN batch maximum once kept every row running)."""
    m = make(share=share)
    with torch.no_grad():
        m.transformer.wte.weight = torch.nn.Parameter(m.transformer.wte.weight.detach().clone())
        m.transformer.wte.weight[V - 1] = float("inf")
    idx = prompts(2, 1, seed=1, vocab=V - 1)        # one-token prompts: every step a decode
    idx[0, 0] = V - 1                               # step (no packed prompt attention)
    n = 10
    thr = generated_median_confidence(m, idx[1:], n)
    got, alone = [], []
    out = m.generate(idx, n, temperature=0, exit_threshold=thr, step_logits=got)
    ref, ref_logits = masked_reference(m, idx, n, thr)
    out1 = m.generate(idx[1:], n, temperature=0, exit_threshold=thr, step_logits=alone)
    assert m.last_generate_stats["avg_exit_depth"] < L
    assert torch.equal(out1[0], ref[1]) and torch.equal(out[1], ref[1])
    for g, a, r in zip(got, alone, ref_logits):
        torch.testing.assert_close(g[1], r[1], rtol=0, atol=1e-5)
        torch.testing.assert_close(g[1], a[0], rtol=0, atol=1e-5)


def test_autocast_checked_never_firing_threshold_equals_full_depth():
    """Under torch.autocast(cpu, bf16) a threshold that is checked at every layer but never
    fires decodes full depth's logits bit for bit: the kernel's fused [c_attn; lm_head]
    matmul runs under autocast like the c_attn-only one (an out= buffer would bypass it)."""
    m = make(scale=1.0)
    idx = prompts(2, 5, seed=3)
    full, early = [], []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m.generate(idx, 6, temperature=0, step_logits=full)
        m.generate(idx, 6, temperature=0, exit_threshold=1.0, step_logits=early)
    assert kernel_type(m) is decode._SharedPreLN
    assert m.last_generate_stats["avg_exit_depth"] == L
    assert all(torch.equal(a, b) for a, b in zip(full, early))


def test_head_buffers_only_for_the_full_batch(monkeypatch):
    """The kernel keeps its two reused head buffers for the batch's row count only (rows
    exiting at several depths would otherwise leave a pair per row count for the whole
    generate); the probe's own rows leave none behind."""
    seen, kernel_for = [], decode.kernel_for
    monkeypatch.setattr(decode, "kernel_for",
                        lambda model, head: seen.append(kernel_for(model, head)) or seen[-1])
    m = make(pos_encoding="rope")
    del m._decode_probe                             # probe again: its 4 rows
    idx = prompts(8, 4, seed=0)
    thr = layer1_median_confidence(m, idx, q=0.8)
    m.generate(idx, 8, temperature=0, exit_threshold=thr)
    assert 1 < m.last_generate_stats["avg_exit_depth"] < L
    k = seen[-1]
    assert k.buf_rows == 8 and [o.size(0) for o, _ in k.bufs] == [8, 8]


@pytest.mark.parametrize("C,nh,vocab,B", [(64, 2, 65, 2), (384, 6, 65, 8), (64, 2, 64, 3)])
def test_checked_never_firing_threshold_gives_full_depths_bits_in_fp32(C, nh, vocab, B):
    """fp32: a threshold checked at every layer that never fires (1.0) gives full depth's
    logits bit for bit, also where 3C + V is odd (the benchmark's 384 x 65 model): q, k, v read
    from the fused [c_attn; lm_head] output had a row stride of 3C + V instead of c_attn's 3C,
    and attention gave other last bits for them (the fused rows are padded to 64 bytes)."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=32, vocab_size=vocab, n_layer=L, n_head=nh, n_embd=C,
                      share_weights=True)).eval()
    idx = prompts(B, 5, seed=2, vocab=vocab)
    full, early = [], []
    a = m.generate(idx, 6, temperature=0, step_logits=full)
    b = m.generate(idx, 6, temperature=0, exit_threshold=1.0, step_logits=early)
    assert kernel_type(m) is decode._SharedPreLN
    assert m.last_generate_stats["avg_exit_depth"] == L
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(full, early))


@pytest.mark.parametrize("confidence", ["max-prob", "kl-prev", "state-cosine"])
def test_a_finished_generates_measure_is_freed_without_the_cycle_collector(confidence,
                                                                            monkeypatch):
    """The exit check (decode._Measure) holds no reference to itself: when generate returns
    it is freed at once, with what it holds (kl-prev: a view of the kernel's head buffer)."""
    import gc
    import weakref
    made, exit_check = [], decode._exit_check

    def spy(*a):
        measure = exit_check(*a)
        made.append(weakref.ref(measure))
        return measure
    monkeypatch.setattr(decode, "_exit_check", spy)
    m = make(scale=1.0, confidence=confidence)
    idx = prompts(2, 4, seed=1)
    gc.disable()
    try:
        m.generate(idx, 5, temperature=0, exit_threshold=0.99)
        assert len(made) == 1 and made[0]() is None
    finally:
        gc.enable()
