"""GPT-2 for early-exit research: shared-weight blocks, a head after every layer, early exit.

The default `GPTConfig()` is exactly GPT-2 124M (nanoGPT / build-nanogpt). Variants are strings
in the config, validated in `GPTConfig.__post_init__` and resolved once in `GPT.__init__`:

- `block_type`   -> `BLOCKS` (the residual wirings of the journal, ../shared/seeds/000)
- `pos_encoding` -> `POS_ENCODINGS` (learned | sinusoidal | rope | none)
- `confidence`, `exit_mode`, `exit_loss` -> `exits.CONFIDENCES`, `exits.EXIT_RULES`,
  `exits.EXIT_LOSSES`;  `head_impl` -> `heads.HEAD_IMPLS`

A shared-weight model can be run at any depth at test time (`GPT.at_depth`) and trained with a
random depth per step (`depth_sampling`, `sample_depth`).

Every block maps one residual-stream tensor (B, T, C) to the next, so all wirings share one
layer loop (`GPT._trunk`, training forward and evaluation); KV-cached generation runs the same
blocks through its own loops in decode.py (`GPT.generate`).
"""
import contextlib
import inspect
import math
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import decode
import exits
import heads


# ----------------------------------------------------------------------------------------------
# config

@dataclass
class GPTConfig:
    block_size: int = 1024          # max sequence length (context window)
    vocab_size: int = 50304         # GPT-2's 50257 padded up to a multiple of 64
    n_layer: int = 12               # depth: number of block applications
    n_head: int = 12                # attention heads
    n_embd: int = 768               # embedding width C
    dropout: float = 0.0            # dropout on embeddings, attention and residual branches
    bias: bool = True               # biases in Linear layers and LayerNorms (GPT-2: True)
    share_weights: bool = False     # one Block applied n_layer times (the journal's weight reuse)
    block_type: str = "pre-ln"      # residual wiring, a name in BLOCKS
    ln_learnable: bool = True       # LayerNorms with scale/shift (False: elementwise_affine=False)
    attention: str = "gpt2"         # attention module, a name in ATTENTIONS
    activation: str = "gelu"        # MLP nonlinearity, a name in ACTIVATIONS (gelu = GPT-2's tanh form)
    lm_head_bias: bool = False      # a bias in the (tied) lm_head, shared by every layer's head
    pos_encoding: str = "learned"   # learned (GPT-2 wpe) | sinusoidal | rope | none
    rope_base: float = 10000.0      # RoPE frequency base (pos_encoding="rope")
    layer_heads: bool = False       # a head after every layer (shared ln_f + tied lm_head)
    early_exit: bool = False        # tokens exit at the first layer whose confidence triggers
    exit_threshold: float = 0.9     # exit_mode="threshold": exit when confidence >= this (>1: never)
    exit_mode: str = "threshold"    # exit rule, a name in exits.EXIT_RULES (threshold | sample)
    exit_propagate: bool = False    # forward: exited tokens' state frozen for deeper layers (CALM);
                                    # False = journal: all layers run, exited tokens just stop counting.
                                    # KV decoding (generate) always propagates: that is what skips work
    confidence: str = "max-prob"    # per-layer confidence, a name in exits.CONFIDENCES
    argmax_stable_k: int = 2        # confidence "argmax-stable": exit once the argmax held for k
                                    # consecutive layers (k >= 1; earliest exit at layer k + 1)
    exit_loss: str = "final"        # training loss, a name in exits.EXIT_LOSSES
    head_impl: str = "fused"        # per-layer head implementation, a name in heads.HEAD_IMPLS
    layerskip_scale: float = 1.0    # exit_loss="layerskip": e_scale of the per-layer weights
    layerskip_curriculum: str = "gradual"  # layerskip: gradual | rotational | none
    layerskip_rotation: int = 2     # layerskip rotational curriculum: period R (in steps)
    prev_token_shift: int = 1       # reward-prev-token: 1 = the journal's diagram, 0 = same position
    depth_sampling: str = "fixed"   # training depth per step, a name in DEPTH_SAMPLERS: fixed
                                    # (n_layer) | uniform | lognormal-poisson over [1, depth_max]
    depth_max: int = 0              # largest depth drawn (0: 2 * n_layer - 1, uniform mean n_layer)
    exit_token_frac: float = 1.0    # training: heads of layers 1..L-1 on this random fraction of
                                    # the token positions (whole columns); last head on every token
    exit_layer_frac: float = 1.0    # training: heads on a random max(1, round(frac*(L-1))) of
                                    # layers 1..L-1 per micro step (+ the last), terms rescaled

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for f in dataclasses.fields(self):
            if f.type in (bool, "bool") and not isinstance(getattr(self, f.name), bool):
                raise ValueError(f"{f.name} must be True or False, got {getattr(self, f.name)!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.pos_encoding == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"pos_encoding='rope' needs an even head size, got "
                             f"{self.n_embd // self.n_head}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        t = float(self.exit_threshold)
        if math.isnan(t) or t < 0.0:
            raise ValueError(f"exit_threshold must be >= 0 (> 1 never exits), got {t!r}")
        if not float(self.rope_base) > 0.0:
            raise ValueError(f"rope_base must be > 0, got {self.rope_base!r}")
        _check_name("block_type", self.block_type, BLOCKS)
        _check_name("attention", self.attention, ATTENTIONS)
        _check_name("activation", self.activation, ACTIVATIONS)
        _check_name("pos_encoding", self.pos_encoding, POS_ENCODINGS)
        _check_name("head_impl", self.head_impl, heads.HEAD_IMPLS)
        _check_name("confidence", self.confidence, exits.CONFIDENCES)
        _check_name("exit_mode", self.exit_mode, exits.EXIT_RULES)
        _check_name("exit_loss", self.exit_loss, exits.EXIT_LOSSES)
        _check_name("layerskip_curriculum", self.layerskip_curriculum, exits.LAYERSKIP_CURRICULA)
        if isinstance(self.layerskip_rotation, bool) or not isinstance(self.layerskip_rotation, int) \
                or self.layerskip_rotation < 1:
            raise ValueError(f"layerskip_rotation must be an int >= 1, got {self.layerskip_rotation!r}")
        if isinstance(self.argmax_stable_k, bool) or not isinstance(self.argmax_stable_k, int) \
                or self.argmax_stable_k < 1:
            raise ValueError(f"argmax_stable_k must be an int >= 1, got {self.argmax_stable_k!r}")
        _check_name("depth_sampling", self.depth_sampling, DEPTH_SAMPLERS)
        if isinstance(self.depth_max, bool) or not isinstance(self.depth_max, int) or self.depth_max < 0:
            raise ValueError(f"depth_max must be an int >= 1 (0: 2 * n_layer - 1), got {self.depth_max!r}")
        if self.depth_sampling != "fixed" and not self.share_weights:
            raise ValueError(f"depth_sampling {self.depth_sampling!r} applies one block a random "
                             "number of times: needs share_weights")
        if self.prev_token_shift not in (0, 1):
            raise ValueError(f"prev_token_shift must be 0 or 1, got {self.prev_token_shift!r}")
        if not float(self.layerskip_scale) >= 0.0:
            raise ValueError(f"layerskip_scale must be >= 0, got {self.layerskip_scale!r}")
        # every loss but "final" is a function of all layers' heads: such a config turns the
        # per-layer heads on itself (auto-enable, so `--exit_loss=4-test` alone is a valid run)
        if self.exit_loss != "final":
            self.layer_heads = True
        self._check_exit_sampling()


    def _check_exit_sampling(self):
        """exit_token_frac / exit_layer_frac in (0, 1], and only where they keep their meaning."""
        for name in ("exit_token_frac", "exit_layer_frac"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v <= 1.0:
                raise ValueError(f"{name} must be a number in (0, 1], got {v!r}")
        loss = exits.EXIT_LOSSES[self.exit_loss]
        if self.exit_token_frac < 1:
            if not (self.layer_heads or self.early_exit):
                raise ValueError("exit_token_frac < 1 needs per-layer heads (layer_heads, "
                                 "early_exit or an exit_loss other than 'final')")
            if not loss.token_sampling:
                raise ValueError(f"exit_token_frac < 1: exit_loss {self.exit_loss!r} compares "
                                 "neighbouring positions and cannot run on sampled tokens")
            if self.early_exit and self.exit_propagate:
                raise ValueError("exit_token_frac < 1 with exit_propagate: a propagated exit "
                                 "needs every token's confidence at every layer")
        meas = exits.CONFIDENCES[self.confidence]
        if meas.learned and not (self.layer_heads or self.early_exit):
            raise ValueError(f"confidence {self.confidence!r} trains its exit classifier on the "
                             "per-layer heads: needs layer_heads, early_exit or an exit_loss "
                             "other than 'final'")
        if self.exit_layer_frac < 1 and (meas.prev or meas.history):
            raise ValueError(f"confidence {self.confidence!r} compares consecutive layers: "
                             "exit_layer_frac must be 1")
        if self.exit_layer_frac < 1:
            if not loss.layer_sampling or self.early_exit:
                known = sorted(n for n, f in exits.EXIT_LOSSES.items() if f.layer_sampling)
                raise ValueError(f"exit_layer_frac < 1 needs a loss that is a sum over layers "
                                 f"and early_exit off (exit masks need every layer); got "
                                 f"exit_loss {self.exit_loss!r}, early_exit {self.early_exit}; "
                                 f"such losses: {', '.join(known)}")

    def exit_heads_mode(self):
        """The per-layer head mode of a training step, in words (for the log header)."""
        L = self.n_layer
        if not (self.layer_heads or self.early_exit) or L == 1:
            return "final head only"
        early = f"all of layers 1..{L - 1}"
        if self.exit_layer_frac < 1:
            early = (f"{max(1, round(self.exit_layer_frac * (L - 1)))} random of layers 1..{L - 1}"
                     f" per micro step (exit_layer_frac={self.exit_layer_frac:g})")
        on = ("every token" if self.exit_token_frac >= 1 else
              f"a random {self.exit_token_frac:g} of the tokens (exit_token_frac)")
        return (f"exit heads of {early} on {on}, layer {L}'s on every token: "
                f"{self.n_head_evals():.3g} head evaluations per token in training")

    def n_head_evals(self):
        """Full-vocabulary head evaluations per training token: 1 (the final head) plus the
        per-layer heads, scaled by the exit sampling fractions."""
        if not (self.layer_heads or self.early_exit) or self.n_layer == 1:
            return 1.0
        early = self.n_layer - 1
        if self.exit_layer_frac < 1:
            early = max(1, round(self.exit_layer_frac * early))
        return 1.0 + early * self.exit_token_frac


DEPTH_SAMPLERS = ("fixed", "uniform", "lognormal-poisson")
HUGINN_SIGMA = 0.5      # lognormal-poisson: std of log(lambda) (Geiping et al. 2025, Huginn)


def sample_depth(config, seed, step):
    """The depth (block applications) of optimizer step `step` -> int in [1, depth_max].
    fixed: n_layer. Otherwise drawn from numpy's Generator seeded by (seed, step): the same on
    every DDP rank, and a resumed run draws what the uninterrupted one did (nothing saved).
      uniform:           d ~ U{1, ..., depth_max}
      lognormal-poisson: tau ~ N(log(n_layer - 1) - sigma^2 / 2, sigma), d = Poisson(e^tau) + 1
                         (Huginn's recurrence sampler: mean n_layer, heavy right tail), clamped
                         to [1, depth_max]; n_layer 1: d = 1.
    depth_max 0 means 2 * n_layer - 1 (uniform's mean is then n_layer)."""
    import numpy as np
    L = config.n_layer
    hi = config.depth_max or 2 * L - 1
    if config.depth_sampling == "fixed":
        return L
    rng = np.random.default_rng([int(seed), int(step), 0x6465707468])       # "depth"
    if config.depth_sampling == "uniform":
        return int(rng.integers(1, hi + 1))
    if L == 1:
        return 1
    tau = rng.normal(math.log(L - 1) - HUGINN_SIGMA ** 2 / 2, HUGINN_SIGMA)
    return int(min(max(rng.poisson(math.exp(tau)) + 1, 1), hi))


def _check_name(field, name, registry):
    if name not in registry:
        raise ValueError(f"unknown {field} {name!r}; known: {', '.join(sorted(registry))}")


# ----------------------------------------------------------------------------------------------
# layers

def make_ln(config):
    """LayerNorm over C; parameter-free when ln_learnable=False (the journal's "LN without
    learnable params", whose output has unbiased std sqrt(C/(C-1)))."""
    return nn.LayerNorm(config.n_embd, elementwise_affine=config.ln_learnable, bias=config.bias)


def rope_rotate(x, cos, sin):
    """Rotate pairs (x[..., :d/2], x[..., d/2:]) of x (B, nh, T, hd) by the angles of cos/sin (T, hd/2)."""
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


# attention variants: the journal's questions about the value matrix and c_proj, and seed 002's
# per-head modules. Each maps x (B, T, C) -> (B, T, C) and exposes qkv / kv / out so the one
# forward (SDPA, RoPE, KV cache) serves all of them.

def _registrar(registry):
    """A class decorator factory: @register(name) puts the class in registry under name."""
    def register(name):
        def wrap(cls):
            registry[name] = cls
            cls.name = name
            return cls
        return wrap
    return register


ATTENTIONS = {}   # name -> CausalSelfAttention subclass (GPTConfig.attention)
register_attention = _registrar(ATTENTIONS)


@register_attention("gpt2")
class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (SDPA), GPT-2's: one c_attn (C -> 3C) gives q, k, v of
    every head; c_proj (C -> C) mixes the heads' outputs. x (B, T, C) -> (B, T, C)."""
    has_value = True      # False: the values are x itself (no value matrix)
    has_c_proj = True     # False: the heads' outputs are concatenated, not projected

    def __init__(self, config):
        super().__init__()
        C = config.n_embd
        self.n_head, self.n_embd, self.dropout = config.n_head, C, config.dropout
        self._make_qkv(config)
        if self.has_c_proj:
            self.c_proj = nn.Linear(C, C, bias=config.bias)
            self.c_proj.NANOGPT_SCALE_INIT = 1                 # residual projection
        self.resid_dropout = nn.Dropout(config.dropout)

    def _make_qkv(self, config):
        C = config.n_embd
        n = 3 if self.has_value else 2
        self.c_attn = nn.Linear(C, n * C, bias=config.bias)   # q, k (, v) for all heads

    def _heads(self, t):
        B, T, C = t.shape
        return t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)   # (B, nh, T, hd)

    def qkv(self, x):
        """x (B, T, C) -> q, k, v (B, nh, T, hd) each, before RoPE."""
        parts = [self._heads(t) for t in self.c_attn(x).split(self.n_embd, dim=2)]
        return parts if self.has_value else parts + [self._heads(x)]

    def kv(self, x):
        """x (B, T, C) -> k, v (B, nh, T, hd) without computing q (one matmul for both)."""
        C = self.n_embd
        b = self.c_attn.bias
        kv = F.linear(x, self.c_attn.weight[C:], None if b is None else b[C:])
        k, v = kv.split(C, dim=2) if self.has_value else (kv, x)
        return self._heads(k), self._heads(v)

    def out(self, y):
        """The heads' outputs concatenated, y (B, T, C) -> (B, T, C)."""
        return self.c_proj(y) if self.has_c_proj else y

    def project_kv(self, x, rope=None):
        """Keys and values only (B, nh, T, hd) each: what deeper layers of an exited token need."""
        k, v = self.kv(x)
        if rope is not None:
            k = rope_rotate(k, *rope)
        return k, v

    def forward(self, x, rope=None, cache=None):
        """x (B, T, C); rope (cos, sin) (T, hd/2) for these positions (or broadcastable to
        (B, nh, T, hd/2)) or None; cache None (causal over these T tokens) or a decode.KVSlot:
        `cache.attend(q, k, v)` stores the new keys/values and attends over all cached ones."""
        B, T, C = x.shape
        q, k, v = self.qkv(x)
        if rope is not None:
            q, k = rope_rotate(q, *rope), rope_rotate(k, *rope)
        if cache is None:
            drop = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        else:
            y = cache.attend(q, k, v)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.out(y))


@register_attention("no-c-proj")
class NoProjAttention(CausalSelfAttention):
    """The journal's "perhaps we can get rid of c_proj?": the heads' outputs, concatenated,
    are the attention output (no C x C projection after the heads)."""
    has_c_proj = False


@register_attention("value-identity")
class ValueIdentityAttention(CausalSelfAttention):
    """The journal's "How necessary is the value matrix? ... Perhaps the value matrices should
    just be the embedding itself": c_attn gives q, k only (C -> 2C); each head's values are its
    slice of the attention input x (the normalised residual stream), v = heads(x)."""
    has_value = False


class _Head(nn.Module):
    """One head's key, query and value maps C -> hd, without bias (ng-video-lecture's Head)."""

    def __init__(self, C, hd):
        super().__init__()
        self.key = nn.Linear(C, hd, bias=False)
        self.query = nn.Linear(C, hd, bias=False)
        self.value = nn.Linear(C, hd, bias=False)


@register_attention("per-head")
class PerHeadAttention(CausalSelfAttention):
    """Seed 002's `gpt` / `gpt_v2` (karpathy/ng-video-lecture's MultiHeadAttention): n_head
    separate Head modules, each with bias-free key/query/value Linear(C, hd), softmax of
    q k^T / sqrt(hd) under the causal mask, outputs concatenated, then c_proj (the lecture's
    `proj`, with bias). The same function class as "gpt2" with a bias-free c_attn, but its own
    parameters and layout."""

    def _make_qkv(self, config):
        hd = config.n_embd // config.n_head
        self.heads = nn.ModuleList([_Head(config.n_embd, hd) for _ in range(config.n_head)])

    def qkv(self, x):
        return [torch.stack([getattr(h, n)(x) for h in self.heads], dim=1)
                for n in ("query", "key", "value")]

    def kv(self, x):
        return [torch.stack([getattr(h, n)(x) for h in self.heads], dim=1) for n in ("key", "value")]


# MLP activations (GPTConfig.activation): name -> module factory
ACTIVATIONS = {
    "gelu": lambda: nn.GELU(approximate="tanh"),   # GPT-2's gelu_new (also makemore's NewGELU)
    "gelu-erf": nn.GELU,                           # exact GELU (nanoGPT's nn.GELU())
    "relu": nn.ReLU,                               # ng-video-lecture (seed 002's gpt, gpt_v2)
}


class MLP(nn.Module):
    """GPT-2 MLP: c_fc (C -> 4C), activation (tanh-GELU, HF's gelu_new, or ReLU), c_proj (4C -> C)."""

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.act = ACTIVATIONS[config.activation]()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.NANOGPT_SCALE_INIT = 1
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


# ----------------------------------------------------------------------------------------------
# blocks: the residual wirings of the journal
#
# Reading of the journal's notation (seed 000, "8-experiments"): a block receives the residual
# stream `res` and writes `x = ln_1(res)`; "res + attn(x), x + mlp(LN(x))" is then plain pre-LN
# GPT-2, and "x = x + self.attn(x) ... (note, using x instead of res)" names the residual that is
# carried. One stream flows between layers; every block returns (out, mid), mid being the
# stream after the attention sublayer (the journal's SIZE COMPARISON "mid").

BLOCKS = {}   # name -> Block subclass
register_block = _registrar(BLOCKS)


class Block(nn.Module):
    """Base: ln_1, attn, ln_2, mlp with GPT-2 names. forward(res (B,T,C), rope, caches) ->
    (out (B,T,C), mid (B,T,C)); `caches` is a list with one decode.KVSlot per attention module
    (order of `attentions()`) or None."""
    has_ln_1 = True

    def __init__(self, config):
        super().__init__()
        if self.has_ln_1:
            self.ln_1 = make_ln(config)
        self.attn = ATTENTIONS[config.attention](config)
        self.ln_2 = make_ln(config)
        self.mlp = MLP(config)

    def attentions(self):
        """The attention modules, in cache order."""
        return [self.attn]

    def attn_in(self, res):
        """What every attention module of the block reads (its K/V come from this)."""
        return self.ln_1(res)

    def frozen_kv(self, res, rope=None):
        """[(k, v)] of every attention module for a frozen (exited) state res: all a deeper
        layer needs from a token that no longer runs (CALM state propagation)."""
        a = self.attn_in(res)
        return [m.project_kv(a, rope) for m in self.attentions()]

    @staticmethod
    def _slot(caches, i):
        return None if caches is None else caches[i]


@register_block("pre-ln")
class PreLNBlock(Block):
    """GPT-2 (default; exact HF parity):
        x = x + attn(ln_1(x))          # mid
        x = x + mlp(ln_2(x))
    """

    def forward(self, x, rope=None, caches=None):
        mid = x + self.attn(self.ln_1(x), rope, self._slot(caches, 0))
        return mid + self.mlp(self.ln_2(mid)), mid


# "res": the journal's base wiring in its own notation, "res + attn(x), x + mlp(LN(x))":
#     x = ln_1(res);  x = res + attn(x)  (mid);  x = x + mlp(ln_2(x))
# res is the stream entering the block and x = ln_1(res) a local, so this is "pre-ln" itself
# (test_model's BLOCK_EQUATIONS writes it out independently). The journal's SIZE COMPARISON logs
# support a single stream: in the "res + attn(x), x*mlp(LN(x))" log, mid of layer l equals the
# previous layer's output plus a small attention term (e.g. 53.38 vs 53.25, 499.23 vs 499.09).
BLOCKS["res"] = PreLNBlock


@register_block("res-attn2")
class ResAttn2Block(Block):
    """Double attention, "res*attn2(x) + attn(x), x + mlp(LN(x))" (8-experiments):
        x = ln_1(res)
        x = res * attn2(x) + attn(x)   # mid; attn2 has its own weights, same input
        x = x + mlp(ln_2(x))
    attn2 is a second CausalSelfAttention (GPT-2 init, scaled c_proj) gating the residual.
    """

    def __init__(self, config):
        super().__init__(config)
        self.attn2 = ATTENTIONS[config.attention](config)

    def attentions(self):
        return [self.attn, self.attn2]

    def _mid(self, res, rope, caches):
        a = self.ln_1(res)
        return res * self.attn2(a, rope, self._slot(caches, 1)) + self.attn(a, rope, self._slot(caches, 0))

    def forward(self, res, rope=None, caches=None):
        mid = self._mid(res, rope, caches)
        return mid + self.mlp(self.ln_2(mid)), mid


@register_block("res-attn2-mlp2")
class ResAttn2Mlp2Block(ResAttn2Block):
    """Double attention and double MLP, "res*attn2(x) + attn(x), x*mlp2(LN(x)) + mlp(LN(x))":
        x = ln_1(res)
        x = res * attn2(x) + attn(x)   # mid
        m = ln_2(x)                    # one LN(x) feeds both MLPs
        x = x * mlp2(m) + mlp(m)
    """

    def __init__(self, config):
        super().__init__(config)
        self.mlp2 = MLP(config)

    def forward(self, res, rope=None, caches=None):
        mid = self._mid(res, rope, caches)
        m = self.ln_2(mid)
        return mid * self.mlp2(m) + self.mlp(m), mid


@register_block("res-mul-attn")
class ResMulAttnBlock(Block):
    """The bare multiplicative attention of the journal's LN-without-params remark, "If we use
    res*attn(x), weirdly (and as previously seen), the residuals blow up":
        x = ln_1(res)
        x = res * attn(x)              # mid; no additive residual around attention
        x = x + mlp(ln_2(x))
    ("res-attn2" is the other reading: the double attention res*attn2(x) + attn(x) seen before.)
    """

    def forward(self, res, rope=None, caches=None):
        mid = res * self.attn(self.ln_1(res), rope, self._slot(caches, 0))
        return mid + self.mlp(self.ln_2(mid)), mid


@register_block("res-mul-mlp")
class ResMulMlpBlock(Block):
    """Multiplicative MLP, "res + attn(x), x * mlp(LN(x))":
        x = ln_1(res)
        x = res + attn(x)              # mid
        x = x * mlp(ln_2(x))           # no additive residual around the MLP
    """

    def forward(self, res, rope=None, caches=None):
        mid = res + self.attn(self.ln_1(res), rope, self._slot(caches, 0))
        return mid * self.mlp(self.ln_2(mid)), mid


@register_block("no-ln-attn")
class NoLNAttnBlock(Block):
    """No LayerNorm before attention (issue 4's reading of "x = x + self.attn(x)"):
        x = x + attn(x)                # mid; attention reads the raw stream
        x = x + mlp(ln_2(x))
    The block has no ln_1. See "ln-x-attn" for the other reading of the same journal line.
    """
    has_ln_1 = False

    def attn_in(self, res):
        return res

    def forward(self, x, rope=None, caches=None):
        mid = x + self.attn(x, rope, self._slot(caches, 0))
        return mid + self.mlp(self.ln_2(mid)), mid


@register_block("ln-x-attn")
class LNXAttnBlock(Block):
    """The journal's "x = x + self.attn(x); x = x + self.mlp(self.ln_2(x)) (note, using x
    instead of res)" read with x = ln_1(res), as in the journal's other formulas:
        x = ln_1(res)
        x = x + attn(x)                # mid; the carried residual is the normalised input
        x = x + mlp(ln_2(x))
    Why offered too: its logged "prev" stays at ~12.93 at every depth, a depth-independent
    fixed point expected when each layer restarts from ln_1(res), not from an accumulating res.
    """

    def forward(self, res, rope=None, caches=None):
        a = self.ln_1(res)
        mid = a + self.attn(a, rope, self._slot(caches, 0))
        return mid + self.mlp(self.ln_2(mid)), mid


@register_block("10-resescape")
class ResEscapeBlock(Block):
    """10-resescape, "y = res + attn(ln(res)); x = x + mlp(ln(y))" ("we don't add y back in"):
        x = ln_1(res)
        y = res + attn(x)              # mid
        x = x + mlp(ln_2(y))           # x is still ln_1(res): the attention output reaches
                                       # the stream only through the MLP
    Reading: x = ln_1(res) as in the journal's "res + attn(x)". With x = res this variant would
    be identical to 10-x-escape, yet the journal plots them as different runs.
    """

    def forward(self, res, rope=None, caches=None):
        x = self.ln_1(res)
        y = res + self.attn(x, rope, self._slot(caches, 0))
        return x + self.mlp(self.ln_2(y)), y


@register_block("10-x-escape")
class XEscapeBlock(Block):
    """10-x-escape, "y = res + attn(ln(res)); x = res + mlp(ln(y))":
        y = res + attn(ln_1(res))      # mid
        x = res + mlp(ln_2(y))         # the output skips the attention output (MLP input only)
    """

    def forward(self, res, rope=None, caches=None):
        y = res + self.attn(self.ln_1(res), rope, self._slot(caches, 0))
        return res + self.mlp(self.ln_2(y)), y


@register_block("10-y-mlp-res")
class YMlpResBlock(Block):
    """"x = y + mlp(ln(res))" ("how important is it that the output of attention gets fed into
    the MLP?"): attention and MLP both read the block input (a parallel block):
        y = res + attn(ln_1(res))      # mid
        x = y + mlp(ln_2(res))
    ln_2 is the MLP's own LayerNorm (same parameters as pre-ln), applied to res.
    """

    def forward(self, res, rope=None, caches=None):
        y = res + self.attn(self.ln_1(res), rope, self._slot(caches, 0))
        return y + self.mlp(self.ln_2(res)), y


# ----------------------------------------------------------------------------------------------
# positional encodings: each adds to the token embedding and/or gives RoPE tables

SIN_PE_RMS = 0.02   # sinusoidal table scaled to the token embedding's init std (see sinusoidal_table)


def sinusoidal_table(n_pos, C):
    """(n_pos, C) fixed sin/cos table (Vaswani et al.): even dims sin, odd dims cos, values in
    [-1, 1] (RMS 0.71). GPT.__init__ scales it to RMS SIN_PE_RMS: unscaled it drowns
    GPT-2-initialised token embeddings (std 0.02); in a CPU sweep such a model stayed at the
    loss of a context-free model."""
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, C, 2, dtype=torch.float32) * (-math.log(10000.0) / C))
    pe = torch.zeros(n_pos, C)
    pe[:, 0::2] = torch.sin(pos * inv)
    pe[:, 1::2] = torch.cos(pos * inv)[:, : C // 2]
    return pe


def rope_tables(n_pos, head_dim, base):
    """cos, sin (n_pos, head_dim/2) of RoPE (rotate-half form)."""
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    ang = torch.arange(n_pos, dtype=torch.float32)[:, None] * inv[None, :]
    return ang.cos(), ang.sin()


def _pos_learned(model, x, pos0, T):
    return x + model.transformer.wpe.weight[pos0:pos0 + T], None        # = wpe(arange(...))


def _pos_sinusoidal(model, x, pos0, T):
    return x + model.sin_pe[pos0:pos0 + T].to(x.dtype), None


def _pos_rope(model, x, pos0, T):
    return x, (model.rope_cos[pos0:pos0 + T], model.rope_sin[pos0:pos0 + T])


def _pos_none(model, x, pos0, T):
    return x, None


# name -> positions(model, x (B, T, C) token embeddings, pos0, T) -> (x with the absolute
# encoding of positions pos0..pos0+T-1 added, their RoPE tables (cos, sin) or None); resolved
# once in GPT.__init__ (the parameters / buffers each one reads are made there)
POS_ENCODINGS = {"learned": _pos_learned, "sinusoidal": _pos_sinusoidal, "rope": _pos_rope,
                 "none": _pos_none}


# ----------------------------------------------------------------------------------------------
# the model

class ModelOutput(tuple):
    """GPT.forward's result. Unpacks as (logits, loss), nanoGPT's `logits, loss = model(x, y)`;
    .logits, .loss by name, and .stats: the statistics dict with return_stats=True, else None."""

    def __new__(cls, logits, loss, stats=None):
        out = super().__new__(cls, (logits, loss))
        out.stats = stats
        return out

    @property
    def logits(self):
        return self[0]

    @property
    def loss(self):
        return self[1]


def exit_sample_seed(seed, step, micro):
    """The exit-sampling seed of one micro step: a 63-bit int mixed from (run seed, optimizer
    step, global micro index = micro * world + rank). Pass it to GPT.forward."""
    import numpy as np
    return int(np.random.SeedSequence([int(seed), int(step), int(micro)]).generate_state(
        1, np.uint64)[0] >> np.uint64(1))


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        cfg = config
        block_cls = BLOCKS[cfg.block_type]
        n_unique = 1 if cfg.share_weights else cfg.n_layer
        modules = dict(wte=nn.Embedding(cfg.vocab_size, cfg.n_embd))     # GPT-2 names/order
        if cfg.pos_encoding == "learned":
            modules["wpe"] = nn.Embedding(cfg.block_size, cfg.n_embd)
        modules.update(drop=nn.Dropout(cfg.dropout),
                       h=nn.ModuleList([block_cls(cfg) for _ in range(n_unique)]),
                       ln_f=make_ln(cfg))
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=cfg.lm_head_bias)
        self.transformer.wte.weight = self.lm_head.weight   # weight tying
        if cfg.pos_encoding == "sinusoidal":
            self.register_buffer("sin_pe", sinusoidal_table(cfg.block_size, cfg.n_embd)
                                 * (SIN_PE_RMS * math.sqrt(2.0)),
                                 persistent=False)
        if cfg.pos_encoding == "rope":
            cos, sin = rope_tables(cfg.block_size, cfg.n_embd // cfg.n_head, cfg.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.positions = POS_ENCODINGS[cfg.pos_encoding]
        self.progress = 0.0          # training progress in [0, 1] (set_progress)
        self.step = 0                # training step (set_progress)
        self.last_generate_stats = {}
        self.apply(self._init_weights)
        if exits.CONFIDENCES[cfg.confidence].learned:     # CALM's exit classifier, C -> 1;
            self.exit_classifier = nn.utils.skip_init(nn.Linear, cfg.n_embd, 1)  # zeroed, no
            nn.init.zeros_(self.exit_classifier.weight)      # RNG drawn: the trunk and the RNG
            nn.init.zeros_(self.exit_classifier.bias)        # stream are as without it

    def _init_weights(self, module):
        """GPT-2 init: N(0, 0.02); residual projections (NANOGPT_SCALE_INIT) scaled by
        (2 * n_layer) ** -0.5 (n_layer block applications, shared or not)."""
        if isinstance(module, nn.Linear):
            std = 0.02
            if hasattr(module, "NANOGPT_SCALE_INIT"):
                std *= (2 * self.config.n_layer) ** -0.5
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # -- bookkeeping ---------------------------------------------------------------------------

    def block(self, l):
        """The Block applied at depth l (0-based): the one shared block, or the l-th."""
        return self.transformer.h[0 if self.config.share_weights else l]

    @contextlib.contextmanager
    def at_depth(self, depth):
        """Within the block, forward, the losses and generate apply the blocks `depth` times
        instead of n_layer (config.n_layer is set to depth and restored): any depth >= 1 with
        share_weights (test-time depth of a recurrent-depth model), <= n_layer without. None:
        n_layer. ValueError (one line) on a bad depth."""
        L = self.config.n_layer
        if depth is None:
            depth = L
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an int >= 1, got {depth!r}")
        if depth > len(self.transformer.h) and not self.config.share_weights:
            raise ValueError(f"depth {depth} > n_layer {L} needs share_weights (one block "
                             f"applied any number of times); valid: 1..{L}")
        self.config.n_layer = depth
        try:
            yield self
        finally:
            self.config.n_layer = L

    def set_progress(self, frac, step=0):
        """Training progress in [0, 1] and the optimizer step, read by curriculum losses
        (layerskip: gradual uses the progress, rotational the step)."""
        self.progress = float(min(max(frac, 0.0), 1.0))
        self.step = int(step)

    def get_num_params(self, non_embedding=True):
        """Unique parameters (tied / shared counted once); minus wpe when non_embedding."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def num_unique_block_params(self):
        """Parameters of the stored blocks: one block's worth with share_weights."""
        return sum(p.numel() for p in self.transformer.h.parameters())

    def flops_per_token(self, T):
        """Training (fwd + bwd) FLOPs per token at context T, nanoGPT's estimate:
        6 * (matmul weights of every block application, a shared block counted n_layer times)
        + 12 * n_layer * n_attn * C * T (attention scores and values)
        + 6 * C * V per head computed (config.n_head_evals(): one per layer with layer_heads or
        early_exit, else one; fewer under exit_token_frac / exit_layer_frac)."""
        cfg = self.config
        blk = self.block(0)
        w = sum(m.weight.numel() for m in blk.modules() if isinstance(m, nn.Linear))
        n_attn = len(blk.attentions())
        return float(6 * cfg.n_layer * w + 12 * cfg.n_layer * n_attn * cfg.n_embd * T
                     + 6 * cfg.n_embd * cfg.vocab_size * cfg.n_head_evals())

    # -- forward -------------------------------------------------------------------------------

    def _embed(self, idx, pos0=0):
        """idx (B, T) -> (x (B, T, C), rope tables for positions pos0..pos0+T-1 or None)."""
        B, T = idx.shape
        if pos0 + T > self.config.block_size:
            raise ValueError(f"sequence of length {pos0 + T} > block_size {self.config.block_size}")
        x, rope = self.positions(self, self.transformer.wte(idx), pos0, T)  # (B, T, C)
        return self.transformer.drop(x), rope

    def _head_in(self, h):
        """(h (N, C'), weight (V, C')) the heads multiply, from h (..., C): an lm_head bias
        enters as one more input feature, constant 1, whose weight column is the bias."""
        h, w, b = h.reshape(-1, h.size(-1)), self.lm_head.weight, self.lm_head.bias
        if b is not None:
            h = torch.cat([h, h.new_ones(h.size(0), 1)], dim=1)
            w = torch.cat([w, b[:, None].to(w.dtype)], dim=1)
        return h, w

    def _head(self, h, targets, grad):
        """heads.head_outputs on h (B, T, C) -> HeadOut of (B*T,) tensors."""
        with torch.set_grad_enabled(grad):
            h, w = self._head_in(h)
            return heads.head_outputs(h, w, targets, impl=self.config.head_impl)

    def _confidence(self, meas, ho, l, h, x_in, x_out, prev_h, hist, grad):
        """meas (an exits.CONFIDENCES entry) at layer l -> (confidence (N,), exit_logit (N,) or
        None), given what it asks for: ho the layer's HeadOut, h (N, C) its head input (ln_f
        output), x_in / x_out (N, C) the residual stream entering / leaving it, prev_h (N, C)
        the previous layer's head input (None at layer 0), hist the earlier layers' argmax."""
        cin = exits.ConfIn(ho, layer=l, config=self.config, hist=hist if meas.history else ())
        with torch.set_grad_enabled(grad):
            if meas.logit_stat is not None and not (meas.prev and prev_h is None):
                hh, w = self._head_in(h)
                hp = self._head_in(prev_h)[0] if meas.prev else None
                cin.stat = heads.logit_statistic(meas.logit_stat, hh, w, hp,
                                                 impl=self.config.head_impl)
            if meas.state:
                cin.x_in, cin.x_out = x_in, x_out
            if meas.learned:
                cin.exit_logit = self.exit_classifier(h.detach()).squeeze(-1).float()
            return meas(cin), cin.exit_logit

    def _trunk(self, idx, targets=None, *, early=False, threshold=None,
               mode=None, heads_on=False, want_stats=False, propagate=None, sample=None):
        """The layer loop of forward (decoding has its own: decode.py).

        idx (B, T); targets (B, T) or None. With early exit, mask_BT (B, T) marks tokens still
        running; with exit_propagate a token that exited keeps its state at deeper layers
        (torch.where), so the deeper K/V later tokens attend to come from the frozen state.
        sample (training, see `_draw_exit_sample`): (cols, heads_at) with cols (k,) flat token
        indices or None, heads_at the layers whose heads run or None (all). Then layers 0..L-2
        run their heads on the cols only, the last layer on every token; the LayerOuts hold (k,)
        columns (the last layer's too, indexed from its full head), h is the last layer's.
        Returns dict: h (B, T, C) ln_f output at each token's exit layer (last layer without
        early exit), layers [exits.LayerOut] when heads ran, depth (B, T) 1-based exit layer,
        residual_std (L, 3) when want_stats, final_xe (B*T,) the last head's xe on every token
        when cols were sampled.
        """
        cfg = self.config
        L = cfg.n_layer
        B, T = idx.shape
        x, rope = self._embed(idx)
        tflat = None if targets is None else targets.reshape(-1)
        propagate = early and (cfg.exit_propagate if propagate is None else propagate)
        grad = torch.is_grad_enabled()
        cols, heads_at = sample or (None, None)
        mask = torch.ones(B, T, device=idx.device)        # mask_BT: 1 = still running
        if cols is not None:                              # sampled columns only
            mask, tcols = mask.view(-1)[cols], tflat[cols]
        depth = torch.full((B, T), float(L), device=idx.device)
        h_exit, layers, stds, final_xe = None, [], [], None
        meas = exits.CONFIDENCES[cfg.confidence]
        prev_h, hist = None, []                   # previous layer's head input, argmaxes

        def rows(t):                              # (B, T, C) | (k, C) -> the LayerOut rows
            t = t.reshape(-1, t.size(-1))
            return t[cols] if cols is not None and t.size(0) != cols.numel() else t
        for l in range(L):
            blk = self.block(l)
            x_in = x
            out, mid = blk(x_in, rope)
            x = torch.where(mask[..., None] > 0, out, x_in) if propagate else out
            if not (heads_on or early) and l < L - 1:
                continue
            last = l == L - 1
            if heads_at is not None and l not in heads_at:                # head not sampled
                if want_stats:
                    stds.append(_std_row(x, mid, None))
                continue
            on_cols = cols is not None and not last
            h = self.transformer.ln_f(x.reshape(B * T, -1)[cols] if on_cols else x)  # (B,T,C)|(k,C)
            if want_stats:
                stds.append(_std_row(x, mid, h))
            if not (heads_on or early):
                h_exit = h
                break
            # heads of layers that no loss uses run without grad (stats only)
            need_grad = grad and (cfg.layer_heads or early or last)
            ho = self._head(h, tcols if on_cols else tflat, need_grad)
            if cols is not None and last:                                 # every token -> cols
                final_xe = ho.ce
                ho = heads.HeadOut(*(None if t is None else t[cols] for t in ho))

            def view(t):                                          # (B*T,) -> (B, T); cols: (k,)
                return t if t is None or cols is not None else t.view(B, T)
            h_rows = rows(h)
            confidence, exit_logit = self._confidence(
                meas, ho, l, h_rows, rows(x_in) if meas.state else None,
                rows(x) if meas.state else None, prev_h, hist, need_grad)
            confidence = view(confidence)
            prev_h = h_rows
            hist.append(ho.argmax)
            if early:
                trigger = exits.EXIT_RULES[mode](confidence.detach(), threshold)
            else:
                trigger = torch.zeros_like(mask, dtype=torch.bool)
            just_triggered, next_mask = exits.step_masks(mask, trigger, l == L - 1)
            layers.append(exits.LayerOut(
                layer=l, xe=view(ho.ce), confidence=confidence, p_max=view(ho.p_max),
                p_second=view(ho.p_second), argmax=view(ho.argmax), p_target=view(ho.p_target),
                mask_BT=mask, just_triggered=just_triggered, exit_logit=view(exit_logit)))
            if early and cols is None:
                jt = just_triggered[..., None] > 0
                h_exit = h if h_exit is None else torch.where(jt, h, h_exit)
                depth = torch.where(just_triggered > 0, torch.full_like(depth, l + 1), depth)
            elif last:
                h_exit = h
            mask = next_mask
        return {"h": h_exit, "layers": layers, "depth": depth, "final_xe": final_xe,
                "residual_std": torch.stack(stds) if want_stats else None}

    def forward(self, idx, targets=None, return_stats=False, return_logits=True,
                exit_sample_seed=None):
        """idx (B, T) int64, targets (B, T) or None -> ModelOutput: unpacks as
        (logits (B, T, V) | None, loss () | None); .stats with return_stats (see the contract:
        layer_losses, allloss, confloss, targetloss, earlystop, earlystopdict, exit_depth,
        residual_std). Per-layer heads are computed layer by layer through heads.head_outputs;
        with return_stats and layer_heads off they run without grad, for the statistics only.
        In training with exit_token_frac / exit_layer_frac < 1 the per-layer heads run on a
        random subset (`_draw_exit_sample`, from exit_sample_seed, else torch's global RNG)."""
        cfg = self.config
        early = cfg.early_exit
        per_layer = cfg.layer_heads or early
        sample = None
        if self.training and per_layer and targets is not None:
            sample = self._draw_exit_sample(idx.shape, idx.device, exit_sample_seed)
        r = self._trunk(idx, targets, early=early, threshold=cfg.exit_threshold,
                        mode=cfg.exit_mode, heads_on=per_layer or return_stats,
                        want_stats=return_stats, sample=sample)
        h, layers = r["h"], r["layers"]
        logits = self.lm_head(h) if return_logits else None               # (B, T, V)
        loss, terms = None, None
        if targets is not None:
            if per_layer:
                ctx = exits.LossContext(cfg, progress=self.progress, targets=targets,
                                        step=self.step, final_xe=r["final_xe"])
                terms = exits.EXIT_LOSSES[cfg.exit_loss](layers, ctx)
                loss = terms.loss
                if exits.CONFIDENCES[cfg.confidence].learned:
                    loss = loss + exits.exit_classifier_loss(layers)
            elif layers:
                loss = layers[-1].xe.float().mean()
            elif logits is not None:
                loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
            else:
                loss = self._head(h, targets.reshape(-1), torch.is_grad_enabled()).ce.mean()
        stats = self._stats(r, terms, targets, early) if return_stats else None
        return ModelOutput(logits, loss, stats)

    def _draw_exit_sample(self, shape, device, seed=None):
        """(cols, heads_at) for `_trunk`, or None when both fractions are 1: cols (k,) sorted
        flat token indices, k = max(1, round(exit_token_frac * B*T)); heads_at the set of
        max(1, round(exit_layer_frac * (L-1))) layers of 0..L-2 plus L-1. Drawn with
        torch.Generator().manual_seed(seed) (the trainer: `exit_sample_seed`, a function of
        (seed, step, global micro index), so nothing is saved on resume and 2 DDP ranks draw what
        1 rank accumulating their micro steps draws), or torch's global CPU RNG when seed is None."""
        cfg = self.config
        if cfg.exit_token_frac >= 1 and cfg.exit_layer_frac >= 1:
            return None
        gen = None if seed is None else torch.Generator().manual_seed(int(seed))
        cols = heads_at = None
        if cfg.exit_token_frac < 1:
            n = shape[0] * shape[1]
            k = max(1, round(cfg.exit_token_frac * n))
            cols = torch.randperm(n, generator=gen)[:k].sort().values.to(device)
        if cfg.exit_layer_frac < 1 and cfg.n_layer > 1:
            early = cfg.n_layer - 1
            k = max(1, round(cfg.exit_layer_frac * early))
            heads_at = set(torch.randperm(early, generator=gen)[:k].tolist()) | {early}
        return cols, heads_at

    @torch.no_grad()
    def _stats(self, r, terms, targets, early):
        L = self.config.n_layer
        layers = r["layers"]
        dev = r["h"].device
        z = torch.zeros((), device=dev)
        if targets is not None:
            ll = exits.layer_losses(layers, L, r["final_xe"])
        else:
            ll = torch.full((L,), float("nan"), device=dev)
        if len(layers) in (0, L):
            allloss = ll.sum()
        else:   # exit_layer_frac: unsampled early layers are NaN; unbiased (L-1)/k rescaling
            seen = ll[:-1][~ll[:-1].isnan()]
            allloss = seen.sum() * ((L - 1) / seen.numel()) + ll[-1]
        st = {"layer_losses": ll, "allloss": allloss,
              "confloss": z if terms is None else terms.confloss.detach().float(),
              "targetloss": z if terms is None else terms.targetloss.detach().float(),
              "residual_std": r["residual_std"]}
        st.update(exits.exit_summary(layers, early_exit=early))
        return st

    # -- generation ----------------------------------------------------------------------------

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, exit_threshold=None,
                 draft_layers=None, draft_tokens=4, generator=None, step_logits=None, depth=None):
        """Sample max_new_tokens after idx (B, T) with a KV cache -> (B, T + max_new_tokens).
        depth: apply the blocks this many times instead of n_layer (see at_depth).
        temperature 0: greedy. exit_threshold (or config.early_exit): per-token early exit;
        draft_layers=d, draft_tokens=k: self-speculative decoding (first d layers draft k
        tokens, the full model verifies; same output distribution as full depth). See decode.py
        (decode.generate) for the details and model.last_generate_stats."""
        with self.at_depth(depth):
            return decode.generate(self, idx, max_new_tokens, temperature=temperature,
                                   top_k=top_k, exit_threshold=exit_threshold,
                                   draft_layers=draft_layers, draft_tokens=draft_tokens,
                                   generator=generator, step_logits=step_logits)

    # -- torch.compile -------------------------------------------------------------------------

    def compile_blocks(self, on_fallback=print, **compile_kwargs):
        """Regional torch.compile: each stored Block's forward without KV caches (training,
        evaluation, losses) is compiled with fullgraph=True, once per block (a shared block once
        for all depths); state_dict keys, hooks and the heads are unchanged. KV-cached decoding
        (generate) stays eager: its query length and cache length change every token, each a
        recompile. A block whose forward cannot be captured as one graph (a graph break) or that
        exhausts the recompile limit runs eager from then on, with one on_fallback(message).
        Returns the number of blocks set up."""
        blocks = list(self.transformer.h)
        for blk in blocks:
            blk.forward = _CompiledBlockForward(blk, on_fallback, compile_kwargs)
        return len(blocks)

    # -- loading / optimiser -------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_dir, **overrides):
        """GPT-2 weights from Hugging Face: "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl" or a
        local directory saved by transformers. Conv1D weights are transposed; only the causal
        mask buffers ".attn.bias" / ".attn.masked_bias" are skipped (never "c_attn.bias", the
        walkthrough's bug). overrides: e.g. dropout, layer_heads, early_exit, head_impl."""
        from transformers import GPT2LMHeadModel   # test/optional dependency, imported lazily
        hf = GPT2LMHeadModel.from_pretrained(name_or_dir)
        hc = hf.config
        act = getattr(hc, "activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"unsupported activation_function {act!r} (GPT-2 uses gelu_new)")
        args = dict(block_size=hc.n_positions, vocab_size=hc.vocab_size, n_layer=hc.n_layer,
                    n_head=hc.n_head, n_embd=hc.n_embd, bias=True, dropout=0.0)
        for k in ("share_weights", "block_type", "pos_encoding", "ln_learnable"):
            if k in overrides:
                raise ValueError(f"from_pretrained: {k} must keep the GPT-2 default")
        args.update(overrides)
        model = cls(GPTConfig(**args))
        sd = model.state_dict()
        sd_hf = {k: v for k, v in hf.state_dict().items()
                 if not k.endswith(".attn.bias") and not k.endswith(".attn.masked_bias")}
        if set(sd_hf) != set(sd):
            raise ValueError(f"key mismatch: missing {sorted(set(sd) - set(sd_hf))[:5]}, "
                             f"unexpected {sorted(set(sd_hf) - set(sd))[:5]}")
        transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
                      "mlp.c_proj.weight")
        with torch.no_grad():
            for k, v in sd_hf.items():
                if k.endswith(transposed):
                    v = v.t()
                if v.shape != sd[k].shape:
                    raise ValueError(f"shape mismatch for {k}: {tuple(v.shape)} vs {tuple(sd[k].shape)}")
                sd[k].copy_(v)
        return model

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW; weight decay on >= 2-D tensors (matmuls, embeddings) only. Tied and shared
        parameters appear once (named_parameters de-duplicates). Fused kernel on CUDA."""
        params = {pn: p for pn, p in self.named_parameters() if p.requires_grad}
        decay = [p for p in params.values() if p.dim() >= 2]
        nodecay = [p for p in params.values() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay},
                  {"params": nodecay, "weight_decay": 0.0}]
        fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        extra = {"fused": True} if fused else {}
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)


class _CompiledBlockForward:
    """Replaces blk.forward: the compiled forward without caches, the eager one with caches or
    after a fallback (see GPT.compile_blocks)."""

    def __init__(self, blk, on_fallback, compile_kwargs):
        self.eager = blk.forward
        self.compiled = torch.compile(self.eager, fullgraph=True, **compile_kwargs)
        self.name, self.on_fallback = type(blk).name, on_fallback

    def __call__(self, x, rope=None, caches=None):
        if caches is not None or self.compiled is None:
            return self.eager(x, rope, caches)
        import torch._dynamo.exc as dexc
        try:
            return self.compiled(x, rope)
        except (dexc.Unsupported, dexc.UserError, dexc.FailOnRecompileLimitHit) as e:
            self.compiled = None
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            self.on_fallback(f"compile: block {self.name!r} runs eager ({type(e).__name__}: {why})")
            return self.eager(x, rope)


def _token_std(t):
    """Unbiased std over C of every token's vector, averaged over tokens: (B, T, C) -> ().
    Per token, as the journal's numbers imply: a parameter-free LayerNorm output has std
    sqrt(C/(C-1)) = 1.00065 at C=768 per token, while over all B*T*C elements it would be ~1."""
    return t.float().std(dim=-1).mean()


def _std_row(out, mid, h):
    """[prev, mid, next] (3,): _token_std of the residual stream the layer outputs, of the stream
    after its attention sublayer, and of ln_f(out) fed to the head; float32, no grad.
    "prev" is the layer's OUTPUT, as the journal's logs imply: its mid of layer l is prev of
    layer l-1 plus a small attention term (53.249 -> 53.380) and layer 1's mid is 0.057 < prev;
    prev and next therefore describe the same tensor before/after the head's LayerNorm.
    h may be the sampled rows (k, C) of ln_f(out), or None (head not sampled: next is NaN)."""
    with torch.no_grad():
        nxt = _token_std(h) if h is not None else out.new_full((), float("nan"), dtype=torch.float32)
        return torch.stack([_token_std(out), _token_std(mid), nxt])
