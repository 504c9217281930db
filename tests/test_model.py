"""model.py: HF parity, block wirings, shared weights, per-layer stats, KV cache, memory."""
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import ACTIVATIONS, ATTENTIONS, BLOCKS, GPT, POS_ENCODINGS, GPTConfig   # noqa: E402

torch.set_num_threads(1)


def tiny(**kw):
    args = dict(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32)
    args.update(kw)
    return GPTConfig(**args)


def batch(V=64, B=2, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)


# ----------------------------------------------------------------------------------------------
# config

def test_defaults_are_gpt2_124m():
    c = GPTConfig()
    assert (c.block_size, c.vocab_size, c.n_layer, c.n_head, c.n_embd) == (1024, 50304, 12, 12, 768)
    assert c.bias and c.block_type == "pre-ln" and c.pos_encoding == "learned"
    assert not c.layer_heads and not c.early_exit and c.exit_loss == "final"


@pytest.mark.parametrize("kw, needle", [
    (dict(block_type="nope"), "pre-ln"), (dict(pos_encoding="alibi"), "rope"),
    (dict(exit_loss="x"), "4-test"), (dict(confidence="x"), "max-prob"),
    (dict(exit_mode="x"), "threshold"), (dict(head_impl="x"), "checkpoint"),
    (dict(n_embd=30, n_head=4), "divisible"), (dict(n_layer=0), "n_layer"),
    (dict(exit_threshold=-0.1), "exit_threshold"), (dict(dropout=1.0), "dropout"),
    (dict(share_weights="no"), "share_weights must be True or False, got 'no'"),
    (dict(early_exit=1), "early_exit must be True or False, got 1"),
    (dict(layerskip_curriculum="x"), "gradual, none, rotational"),
    (dict(layerskip_rotation=0), "layerskip_rotation"), (dict(prev_token_shift=2), "prev_token_shift"),
])
def test_config_rejects_bad_values(kw, needle):
    with pytest.raises(ValueError, match=needle):
        tiny(**kw)


def test_config_unknown_field_and_auto_layer_heads():
    with pytest.raises(TypeError):
        GPTConfig(n_layers=3)
    assert tiny(exit_loss="all-layers").layer_heads is True     # auto-enabled
    assert tiny(exit_loss="final").layer_heads is False


# ----------------------------------------------------------------------------------------------
# Hugging Face parity

@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hc = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=32)
    hf = transformers.GPT2LMHeadModel(hc).eval()
    with torch.no_grad():   # HF zero-inits biases: randomise every weight so a skipped key shows
        for p in hf.parameters():
            p.normal_(0.0, 0.2)
    d = tmp_path_factory.mktemp("hf_gpt2")
    hf.save_pretrained(d)
    return str(d), hf


@pytest.mark.slow
def test_from_pretrained_logits_match_hf(hf_dir):
    d, hf = hf_dir
    model = GPT.from_pretrained(d).eval()
    idx = torch.randint(0, 100, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(idx).logits
        logits, _ = model(idx)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)
    # c_attn.bias really came from the checkpoint (seed 003's bug filtered it out)
    torch.testing.assert_close(model.transformer.h[1].attn.c_attn.bias,
                               hf.transformer.h[1].attn.c_attn.bias)


def test_state_dict_keys_are_gpt2_names_both_ways(hf_dir):
    d, hf = hf_dir
    model = GPT.from_pretrained(d)
    hf_keys = {k for k in hf.state_dict()
               if not k.endswith(".attn.bias") and not k.endswith(".attn.masked_bias")}
    assert set(model.state_dict()) == hf_keys
    # and back: our weights into a fresh HF model give the same logits
    import transformers
    hf2 = transformers.GPT2LMHeadModel(hf.config).eval()
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith(("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
                       "mlp.c_proj.weight")):
            v = v.t()
        sd[k] = v
    hf2.load_state_dict(sd, strict=False)
    idx = torch.randint(0, 100, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(hf2(idx).logits, model.eval()(idx)[0], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------
# blocks: each registered wiring equals its journal equations written out by hand

def _attn(a, x):
    return a(x)


BLOCK_EQUATIONS = {
    "pre-ln": lambda b, r: (lambda m: m + b.mlp(b.ln_2(m)))(r + b.attn(b.ln_1(r))),
    "res": lambda b, r: (lambda x: x + b.mlp(b.ln_2(x)))(r + b.attn(b.ln_1(r))),
    "res-attn2": lambda b, r: (lambda x: x + b.mlp(b.ln_2(x)))(
        r * b.attn2(b.ln_1(r)) + b.attn(b.ln_1(r))),
    "res-attn2-mlp2": lambda b, r: (lambda x: x * b.mlp2(b.ln_2(x)) + b.mlp(b.ln_2(x)))(
        r * b.attn2(b.ln_1(r)) + b.attn(b.ln_1(r))),
    "res-mul-attn": lambda b, r: (lambda x: x + b.mlp(b.ln_2(x)))(r * b.attn(b.ln_1(r))),
    "res-mul-mlp": lambda b, r: (lambda x: x * b.mlp(b.ln_2(x)))(r + b.attn(b.ln_1(r))),
    "no-ln-attn": lambda b, r: (lambda x: x + b.mlp(b.ln_2(x)))(r + b.attn(r)),
    "ln-x-attn": lambda b, r: (lambda x: x + b.mlp(b.ln_2(x)))(b.ln_1(r) + b.attn(b.ln_1(r))),
    "10-resescape": lambda b, r: b.ln_1(r) + b.mlp(b.ln_2(r + b.attn(b.ln_1(r)))),
    "10-x-escape": lambda b, r: r + b.mlp(b.ln_2(r + b.attn(b.ln_1(r)))),
    "10-y-mlp-res": lambda b, r: r + b.attn(b.ln_1(r)) + b.mlp(b.ln_2(r)),
}


def test_every_block_has_reference_equations():
    assert set(BLOCKS) == set(BLOCK_EQUATIONS)


@pytest.mark.parametrize("block_type", sorted(BLOCKS))
def test_block_matches_journal_equations(block_type):
    torch.manual_seed(0)
    model = GPT(tiny(block_type=block_type)).eval()
    b = model.transformer.h[0]
    with torch.no_grad():   # non-trivial LayerNorm parameters
        for n, p in b.named_parameters():
            if ".ln_" in "." + n or n.startswith("ln_"):
                p.normal_(1.0 if n.endswith("weight") else 0.0, 0.3)
    r = torch.randn(2, 8, 32)
    with torch.no_grad():
        out, _ = b(r)
        ref = BLOCK_EQUATIONS[block_type](b, r)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# attention / MLP / head variants: each equals its equations written out by hand

def _causal_softmax_heads(qs, ks, vs):
    """Per head, ng-video-lecture's Head: softmax(q k^T / sqrt(hd)) under the causal mask, @ v;
    heads concatenated. qs, ks, vs: lists of (B, T, hd)."""
    outs = []
    for q, k, v in zip(qs, ks, vs):
        T = q.size(1)
        wei = q @ k.transpose(-2, -1) * k.size(-1) ** -0.5
        wei = wei.masked_fill(torch.ones(T, T).tril() == 0, float("-inf"))
        outs.append(torch.softmax(wei, dim=-1) @ v)
    return torch.cat(outs, dim=-1)


def _split_heads(t, nh):
    return list(t.chunk(nh, dim=-1))


ATTENTION_EQUATIONS = {
    # q, k, v = x W_attn^T + b split in three; heads; c_proj
    "gpt2": lambda a, x: a.c_proj(_causal_softmax_heads(
        *(_split_heads(t, a.n_head) for t in a.c_attn(x).split(x.size(-1), dim=-1)))),
    # the same without c_proj
    "no-c-proj": lambda a, x: _causal_softmax_heads(
        *(_split_heads(t, a.n_head) for t in a.c_attn(x).split(x.size(-1), dim=-1))),
    # q, k from c_attn (C -> 2C); the values are x itself
    "value-identity": lambda a, x: a.c_proj(_causal_softmax_heads(
        *(_split_heads(t, a.n_head) for t in a.c_attn(x).split(x.size(-1), dim=-1)),
        _split_heads(x, a.n_head))),
    # n_head separate bias-free key/query/value maps, then c_proj (ng-video-lecture)
    "per-head": lambda a, x: a.c_proj(_causal_softmax_heads(
        [h.query(x) for h in a.heads], [h.key(x) for h in a.heads], [h.value(x) for h in a.heads])),
}


def test_every_attention_has_reference_equations():
    assert set(ATTENTIONS) == set(ATTENTION_EQUATIONS)


@pytest.mark.parametrize("attention", sorted(ATTENTIONS))
def test_attention_matches_equations(attention):
    torch.manual_seed(0)
    m = GPT(tiny(attention=attention, n_head=4)).eval()
    a = m.transformer.h[0].attn
    with torch.no_grad():
        for p in a.parameters():       # non-trivial biases too
            p.normal_(0.0, 0.3)
        x = torch.randn(2, 8, 32)
        torch.testing.assert_close(a(x), ATTENTION_EQUATIONS[attention](a, x), atol=1e-5, rtol=1e-5)
        k, v = a.project_kv(x)         # what frozen (exited) tokens feed deeper layers
        _, k2, v2 = a.qkv(x)
        assert torch.equal(k, k2) and torch.equal(v, v2)


def test_attention_variants_parameters():
    C = 32
    n = {name: {k: tuple(p.shape) for k, p in GPT(tiny(attention=name)).transformer.h[0].attn.named_parameters()}
         for name in ATTENTIONS}
    assert n["gpt2"] == {"c_attn.weight": (3 * C, C), "c_attn.bias": (3 * C,), "c_proj.weight": (C, C),
                         "c_proj.bias": (C,)}
    assert n["no-c-proj"] == {"c_attn.weight": (3 * C, C), "c_attn.bias": (3 * C,)}
    assert n["value-identity"] == {"c_attn.weight": (2 * C, C), "c_attn.bias": (2 * C,),
                                   "c_proj.weight": (C, C), "c_proj.bias": (C,)}
    assert n["per-head"] == {**{f"heads.{i}.{w}.weight": (C // 2, C) for i in range(2)
                                for w in ("key", "query", "value")},
                             "c_proj.weight": (C, C), "c_proj.bias": (C,)}


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_mlp_activation(activation):
    torch.manual_seed(0)
    mlp = GPT(tiny(activation=activation)).transformer.h[0].mlp.eval()
    x = torch.randn(2, 5, 32)
    act = {"gelu": lambda t: 0.5 * t * (1 + torch.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t ** 3))),
           "gelu-erf": lambda t: 0.5 * t * (1 + torch.erf(t / math.sqrt(2))),
           "relu": lambda t: t.clamp_min(0)}[activation]
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), mlp.c_proj(act(mlp.c_fc(x))), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("head_impl", ["fused", "checkpoint", "naive"])
def test_lm_head_bias_in_every_layer_head(head_impl):
    """lm_head_bias: logits = ln_f(h) W^T + b at every layer's head (tied W, one b), in the
    losses, the per-layer stats and generation alike; the bias is trained."""
    torch.manual_seed(0)
    m = GPT(tiny(n_layer=3, lm_head_bias=True, exit_loss="all-layers", head_impl=head_impl))
    assert m.lm_head.bias.shape == (64,) and m.transformer.wte.weight is m.lm_head.weight
    with torch.no_grad():
        m.lm_head.bias.normal_(0.0, 1.0)
    idx, y = batch()
    hs = []
    for blk in m.transformer.h:
        blk.register_forward_hook(lambda mod, a, out: hs.append(out[0]))
    out = m(idx, y, return_stats=True)
    logits, loss, st = out.logits, out.loss, out.stats
    ref = [F.cross_entropy((m.transformer.ln_f(h) @ m.lm_head.weight.T + m.lm_head.bias).view(-1, 64),
                           y.view(-1)) for h in hs]
    torch.testing.assert_close(st["layer_losses"], torch.stack(ref).detach())
    torch.testing.assert_close(loss, sum(ref) / 3)
    torch.testing.assert_close(logits, m.transformer.ln_f(hs[-1]) @ m.lm_head.weight.T + m.lm_head.bias)
    loss.backward()
    assert m.lm_head.bias.grad is not None and m.lm_head.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("attention", sorted(ATTENTIONS))
def test_kv_cache_generation_every_attention(attention):
    torch.manual_seed(0)
    m = GPT(tiny(attention=attention, activation="relu", lm_head_bias=True, pos_encoding="rope")).eval()
    with torch.no_grad():
        m.transformer.wte.weight.mul_(20)
    prompt = batch(T=3)[0]
    assert torch.equal(m.generate(prompt, 8, temperature=0), _greedy_no_cache(m, prompt, 8))


@pytest.mark.parametrize("attention", sorted(ATTENTIONS))
def test_every_attention_trains_and_gets_gradients(attention):
    cfg = GPTConfig(block_size=8, vocab_size=32, n_layer=2, n_head=2, n_embd=16, attention=attention,
                    share_weights=True, exit_loss="all-layers", activation="relu", lm_head_bias=True)
    losses = _train_drop(cfg)
    assert sum(losses[-3:]) / 3 < losses[0] - 0.3, losses
    m = GPT(cfg)
    idx, y = batch(V=32, T=8)
    m(idx, y, return_logits=False)[1].backward()
    assert not [n for n, p in m.named_parameters() if p.grad is None]


# ----------------------------------------------------------------------------------------------
# shared weights, parameter counts, flops, optimiser

@pytest.mark.parametrize("block_type", sorted(BLOCKS))
def test_shared_weights_param_counts(block_type):
    one = None
    for L in (2, 4):
        shared = GPT(tiny(n_layer=L, share_weights=True, block_type=block_type))
        unshared = GPT(tiny(n_layer=L, block_type=block_type))
        n_block = sum(p.numel() for p in shared.transformer.h[0].parameters())
        one = n_block if one is None else one
        assert n_block == one
        assert shared.num_unique_block_params() == one
        assert unshared.num_unique_block_params() == L * one
        assert shared.get_num_params() + (L - 1) * one == unshared.get_num_params()


def test_shared_block_is_applied_n_layer_times():
    model = GPT(tiny(n_layer=3, share_weights=True))
    calls = []
    model.transformer.h[0].register_forward_hook(lambda *a: calls.append(1))
    model(batch()[0])
    assert len(calls) == 3 and len(model.transformer.h) == 1


def test_flops_per_token():
    C, V, L, T = 32, 64, 2, 12
    for sw in (False, True):
        m = GPT(tiny(share_weights=sw))
        n_mm = 12 * C * C          # c_attn 3C^2 + c_proj C^2 + c_fc 4C^2 + c_proj 4C^2 per layer
        assert m.flops_per_token(T) == 6 * L * n_mm + 12 * L * C * T + 6 * C * V
        m2 = GPT(tiny(share_weights=sw, layer_heads=True))
        assert m2.flops_per_token(T) == 6 * L * n_mm + 12 * L * C * T + 6 * C * V * L
    m3 = GPT(tiny(block_type="res-attn2-mlp2"))   # + attn2 (4C^2) + mlp2 (8C^2), two attentions
    assert m3.flops_per_token(T) == 6 * L * 24 * C * C + 12 * L * 2 * C * T + 6 * C * V


@pytest.mark.parametrize("share", [False, True])
def test_configure_optimizers_each_param_once(share):
    m = GPT(tiny(share_weights=share, ln_learnable=True))
    opt = m.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    ps = [p for g in opt.param_groups for p in g["params"]]
    assert len(ps) == len({id(p) for p in ps}) == len(list(m.parameters()))
    decay, nodecay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in decay["params"])
    assert nodecay["weight_decay"] == 0.0 and all(p.dim() < 2 for p in nodecay["params"])


def test_init_scaling_and_tying():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=32, vocab_size=256, n_layer=4, n_head=4, n_embd=64))
    assert m.transformer.wte.weight is m.lm_head.weight
    std = m.transformer.h[0].mlp.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(8)) < 0.002
    assert abs(m.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.002


def test_ln_not_learnable_has_no_params():
    m = GPT(tiny(ln_learnable=False))
    assert not any(".ln_" in n for n, _ in m.named_parameters())


# ----------------------------------------------------------------------------------------------
# every variant trains

def _train_drop(cfg, steps=20, lr=1e-2):
    torch.manual_seed(0)
    model = GPT(cfg)
    idx, y = batch(V=cfg.vocab_size, B=4, T=8)
    opt = model.configure_optimizers(0.0, lr, (0.9, 0.95), "cpu")
    losses = []
    for _ in range(steps):
        _, loss = model(idx, y, return_logits=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("ln_learnable", [True, False])
@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
@pytest.mark.parametrize("block_type", sorted(BLOCKS))
def test_every_variant_trains(block_type, pos_encoding, ln_learnable, share):
    cfg = GPTConfig(block_size=8, vocab_size=32, n_layer=2, n_head=2, n_embd=16,
                    block_type=block_type, pos_encoding=pos_encoding, ln_learnable=ln_learnable,
                    share_weights=share)
    losses = _train_drop(cfg)
    # mean of the last 3 steps: the multiplicative wirings spike now and then (as in the journal)
    assert sum(losses[-3:]) / 3 < losses[0] - 0.3, losses


@pytest.mark.parametrize("block_type", sorted(BLOCKS))
@pytest.mark.parametrize("cfg_kw", [
    dict(), dict(exit_loss="all-layers"), dict(early_exit=True, exit_threshold=0.02),
    dict(early_exit=True, exit_threshold=0.02, share_weights=True, exit_loss="4-test"),
])
def test_every_parameter_gets_a_gradient(block_type, cfg_kw):
    """DDP without find_unused_parameters: every parameter is in the graph."""
    torch.manual_seed(0)
    m = GPT(tiny(block_type=block_type, **cfg_kw))
    idx, y = batch()
    m(idx, y, return_logits=False)[1].backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing


# ----------------------------------------------------------------------------------------------
# per-layer losses and SIZE COMPARISON statistics

@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("layer_heads", [False, True])
def test_last_layer_loss_is_final_loss(share, layer_heads):
    torch.manual_seed(0)
    m = GPT(tiny(n_layer=3, share_weights=share, layer_heads=layer_heads))
    idx, y = batch()
    logits, loss = m(idx, y)
    ref = F.cross_entropy(logits.view(-1, 64), y.view(-1))
    torch.testing.assert_close(loss, ref)
    out = m(idx, y, return_stats=True, return_logits=False)
    _, loss2 = out
    st = out.stats
    torch.testing.assert_close(st["layer_losses"][-1], ref)
    torch.testing.assert_close(loss2, ref)
    assert st["layer_losses"].shape == (3,)
    torch.testing.assert_close(st["allloss"], st["layer_losses"].sum())
    # each layer's loss by hand: ln_f + tied head on that layer's output
    hs = []
    for blk in m.transformer.h:
        blk.register_forward_hook(lambda mod, a, out: hs.append(out[0]))
    with torch.no_grad():
        m(idx)
    for l in range(3):
        lg = m.lm_head(m.transformer.ln_f(hs[l]))
        torch.testing.assert_close(st["layer_losses"][l], F.cross_entropy(lg.view(-1, 64), y.view(-1)))
    assert float(st["earlystop"]) == 0.0 and torch.equal(st["earlystopdict"], torch.zeros(3))
    assert float(st["exit_depth"]) == 3.0
    assert float(st["confloss"]) == 0.0 and float(st["targetloss"]) == 0.0


@pytest.mark.parametrize("block_type", sorted(BLOCKS))
def test_residual_std_next_is_sqrt_c_over_c_minus_1(block_type):
    torch.manual_seed(0)
    C = 64
    m = GPT(tiny(n_embd=C, n_head=4, n_layer=3, ln_learnable=False, block_type=block_type))
    with torch.no_grad():   # O(1) activations, so LayerNorm's eps=1e-5 is negligible
        for p in m.parameters():
            p.mul_(15.0)
    out = m(*batch(), return_stats=True)
    st = out.stats
    assert st["residual_std"].shape == (3, 3)
    torch.testing.assert_close(st["residual_std"][:, 2], torch.full((3,), math.sqrt(C / (C - 1))),
                               atol=1e-4, rtol=0)


def test_residual_std_matches_hand_recount_pre_ln():
    torch.manual_seed(0)
    m = GPT(tiny(n_layer=3))
    idx, y = batch()
    ins, mids = [], []
    for blk in m.transformer.h:
        blk.register_forward_pre_hook(lambda mod, a: ins.append(a[0].detach()))
        blk.attn.register_forward_hook(lambda mod, a, out: mids.append(out.detach()))
    out = m(idx, y, return_stats=True)
    st = out.stats
    rows = []
    for l in range(3):
        mid = ins[l] + mids[l]                            # x + attn(ln_1(x))
        out = mid + m.transformer.h[l].mlp(m.transformer.h[l].ln_2(mid))
        h = m.transformer.ln_f(out)
        rows.append(torch.stack([out.std(-1).mean(), mid.std(-1).mean(), h.std(-1).mean()]))
        if l + 1 < 3:  # prev (layer output) is the next layer's input
            assert torch.equal(out, ins[l + 1]) or torch.allclose(out, ins[l + 1], atol=1e-6)
    ref = torch.stack(rows).detach()       # per-token std over C, averaged over tokens
    torch.testing.assert_close(st["residual_std"], ref, atol=1e-6, rtol=1e-5)


def test_stats_without_targets_and_logits_flag():
    m = GPT(tiny(layer_heads=True))
    idx, _ = batch()
    out = m(idx, return_stats=True)
    logits, loss = out
    st = out.stats
    assert logits.shape == (2, 12, 64) and loss is None
    assert torch.isnan(st["layer_losses"]).all()
    logits, loss = m(idx, batch()[1], return_logits=False)
    assert logits is None and loss.ndim == 0


def test_bf16_autocast_close_to_fp32():
    torch.manual_seed(0)
    m = GPT(tiny(layer_heads=True, exit_loss="all-layers"))
    idx, y = batch()
    _, ref = m(idx, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(idx, y, return_stats=True, return_logits=False)
        _, loss = out
        st = out.stats
    loss.backward()
    assert loss.dtype == torch.float32
    assert abs(loss.item() - ref.item()) < 0.05
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


# ----------------------------------------------------------------------------------------------
# KV-cache generation

def _greedy_no_cache(model, idx, n):
    for _ in range(n):
        with torch.no_grad():
            logits, _ = model(idx[:, -model.config.block_size:])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
def test_kv_cache_generation_equals_no_cache(pos_encoding, share):
    torch.manual_seed(0)
    m = GPT(tiny(pos_encoding=pos_encoding, share_weights=share, n_layer=3)).eval()
    with torch.no_grad():
        m.transformer.wte.weight.mul_(20)   # peaky logits: no near-ties in the argmax
    prompt = batch(T=4)[0]
    ref = _greedy_no_cache(m, prompt, 20)  # runs past block_size 16: cropped context
    out = m.generate(prompt, 20, temperature=0)
    assert torch.equal(out, ref)
    assert m.last_generate_stats["avg_exit_depth"] == 3.0
    assert m.last_generate_stats["tokens_per_s"] > 0


@pytest.mark.parametrize("block_type", sorted(BLOCKS))
def test_kv_cache_generation_every_block(block_type):
    torch.manual_seed(0)
    m = GPT(tiny(block_type=block_type, pos_encoding="rope")).eval()
    with torch.no_grad():
        m.transformer.wte.weight.mul_(20)
    prompt = batch(T=3)[0]
    assert torch.equal(m.generate(prompt, 8, temperature=0), _greedy_no_cache(m, prompt, 8))


def test_generate_top_k_1_is_greedy_and_sampling_shapes():
    torch.manual_seed(0)
    m = GPT(tiny()).eval()
    prompt = batch(T=3)[0]
    assert torch.equal(m.generate(prompt, 5, top_k=1), m.generate(prompt, 5, temperature=0))
    out = m.generate(prompt, 5, temperature=0.8, top_k=5)
    assert out.shape == (2, 8) and torch.equal(out[:, :3], prompt)


# ----------------------------------------------------------------------------------------------
# memory: per-layer heads keep no (B, T, V) per layer with head_impl="checkpoint"

def _saved_bytes(cfg, idx, y):
    torch.manual_seed(0)
    m = GPT(cfg)
    seen, total = set(), [0]

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen:
            seen.add(key)
            total[0] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = m(idx, y, return_logits=False)
    loss.backward()
    return total[0]


def test_per_layer_heads_memory_does_not_grow_with_logits():
    B, T, V = 2, 16, 8192
    idx = torch.randint(0, V, (B, T))
    y = torch.randint(0, V, (B, T))
    one_logits = B * T * V * 4
    grow = {}
    for impl in ("fused", "checkpoint", "naive"):
        b = [_saved_bytes(GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=2, n_embd=16,
                                    exit_loss="all-layers", head_impl=impl), idx, y)
             for L in (2, 4)]
        grow[impl] = (b[1] - b[0]) / 2           # bytes per extra layer
    assert grow["fused"] < 0.1 * one_logits, grow     # the default: no (B,T,V) kept at all
    assert grow["checkpoint"] < 0.1 * one_logits, grow
    assert grow["naive"] > 0.9 * one_logits, grow    # contrast: naive keeps (B,T,V) per layer


# ----------------------------------------------------------------------------------------------
# test-time depth and random-depth training (shared weights)

def test_at_depth_applies_the_shared_block_d_times_forward_and_generate():
    """at_depth(5) on a 2-layer shared model: logits == the block applied 5 times by hand;
    greedy KV decoding at depth 5 == the no-cache forward at depth 5; config restored."""
    torch.manual_seed(0)
    m = GPT(tiny(share_weights=True)).eval()
    idx, _ = batch()
    with torch.no_grad():
        x, rope = m._embed(idx)
        for _ in range(5):
            x, _ = m.block(0)(x, rope)
        ref = m.lm_head(m.transformer.ln_f(x))
        with m.at_depth(5):
            got, _ = m(idx)
            seq = idx[:, :4]
            for _ in range(6):
                seq = torch.cat([seq, m(seq)[0][:, -1].argmax(-1, keepdim=True)], 1)
    torch.testing.assert_close(got, ref)
    assert m.config.n_layer == 2
    assert torch.equal(m.generate(idx[:, :4], 6, temperature=0, depth=5), seq)
    assert m.config.n_layer == 2 and m.last_generate_stats["avg_exit_depth"] == 5


@pytest.mark.parametrize("share,depth,msg", [
    (True, 0, "depth must be an int >= 1, got 0"),
    (True, 2.5, "depth must be an int >= 1, got 2.5"),
    (False, 3, "depth 3 > n_layer 2 needs share_weights (one block applied any number of "
               "times); valid: 1..2"),
])
def test_at_depth_rejects_bad_depths(share, depth, msg):
    m = GPT(tiny(share_weights=share))
    with pytest.raises(ValueError) as e:
        with m.at_depth(depth):
            pass
    assert str(e.value) == msg and m.config.n_layer == 2


def test_sample_depth_seeded_in_range_with_mean_n_layer():
    """fixed: n_layer. uniform / lognormal-poisson: a function of (seed, step) only, in
    [1, depth_max], mean ~ n_layer (2 * n_layer - 1 cap: uniform's mean is exactly n_layer)."""
    from model import sample_depth
    assert sample_depth(tiny(n_layer=4), 1, 7) == 4
    for kind in ("uniform", "lognormal-poisson"):
        cfg = tiny(n_layer=4, share_weights=True, depth_sampling=kind)
        ds = [sample_depth(cfg, 1337, s) for s in range(1500)]
        assert ds[:100] == [sample_depth(cfg, 1337, s) for s in range(100)]
        assert ds[:100] != [sample_depth(cfg, 1338, s) for s in range(100)]
        assert min(ds) == 1 and max(ds) == 7
        assert abs(sum(ds) / len(ds) - 4) < 0.25, (kind, sum(ds) / len(ds))
    capped = tiny(n_layer=4, share_weights=True, depth_sampling="uniform", depth_max=2)
    assert {sample_depth(capped, 0, s) for s in range(50)} == {1, 2}


@pytest.mark.parametrize("kw,msg", [
    (dict(depth_sampling="poisson"), "unknown depth_sampling 'poisson'; known: fixed, "
                                     "lognormal-poisson, uniform"),
    (dict(depth_sampling="uniform"), "depth_sampling 'uniform' applies one block a random "
                                     "number of times: needs share_weights"),
    (dict(depth_max=-1), "depth_max must be an int >= 1 (0: 2 * n_layer - 1), got -1"),
])
def test_depth_sampling_config_errors(kw, msg):
    with pytest.raises(ValueError) as e:
        tiny(**kw)
    assert str(e.value) == msg
