"""KV-cached generation for model.GPT: full depth, per-token early exit, self-speculative.

    out = decode.generate(model, idx, max_new_tokens, temperature=1.0, top_k=None,
                          exit_threshold=None, draft_layers=None, draft_tokens=4,
                          generator=None, step_logits=None)       # idx (B, T) -> (B, T + n)

`GPT.generate` forwards here with the same keywords. Three modes, chosen by the keywords:

- full depth (default): every new token runs all n_layer blocks, one head at the end.
- early exit (`exit_threshold=t`, or config.early_exit with config.exit_mode/exit_threshold):
  a token stops at the first layer whose confidence (config.confidence, any exits.CONFIDENCES
  measure; `_Measure` carries what it needs across layers for the rows still running)
  triggers the exit rule; its logits are that layer's head. Its state is frozen for the deeper
  layers (CALM state propagation), and the K/V those layers keep for later tokens are projected
  from it (`Block.frozen_kv`; with shared weights one projection serves every remaining depth).
  Only the last position's head runs in a decode step, only for rows still running; rows (and,
  in the prompt, tokens) that exited are gathered out of the deeper blocks, so they cost
  nothing there. Equal to model.forward with exit_propagate=True (tests, every step's logits).

Decode steps (one new token) run their layers through `kernel_for(model)`: for a shared-weight
pre-ln block with GPT-2 attention, `_SharedPreLN` (the exit head rides on the next layer's
q/k/v matmul, and an exiting row's K/V come from that same matmul); for every other model the
Block modules themselves (`_Blocks`). Prompts and the speculative verification run the Blocks.
- self-speculative (`draft_layers=d, draft_tokens=k`): the first d layers and their head
  draft k tokens one at a time; one forward of layers d..L-1 over the k + 1 positions verifies
  them, reusing the draft's layer 1..d hidden states and K/V (the draft *is* the verifier's
  first d layers). Greedy keeps the longest prefix the full model agrees with plus its own next
  token: output identical to full-depth greedy. With sampling, draft token x is kept with
  probability min(1, p(x) / q(x)) and the first rejected one is resampled from
  normalise(max(0, p - q)) (speculative sampling), so tokens follow the full model's p.
  With batch > 1 every row keeps the batch's shortest accepted prefix (still exact per row).

A context longer than block_size is cropped to the last block_size tokens and re-encoded every
step (nanoGPT). After a call, model.last_generate_stats = {"avg_exit_depth", "tokens_per_s",
"new_tokens", "first_token_s", "decode_tokens_per_s", "decode_exit_depth", "acceptance_rate",
"tokens_per_verify"}: tokens_per_s over the whole call; first_token_s the time to the first new
token (the prompt's encoding); decode_tokens_per_s and decode_exit_depth over the tokens after
it (the decode phase, one step per token: what early exit and speculation speed up); the last
two for speculative decoding (accepted draft tokens / drafted, new tokens per verification).
"""
import math
import time
import warnings

import torch
import torch.nn.functional as F

import exits


# ----------------------------------------------------------------------------------------------
# K/V storage and the per-attention view the attention module writes through


class DecodeCache:
    """K/V of every depth and attention module for B rows: k, v (L, n_attn, B, nh, cap, hd),
    cap = block_size, the two halves of kv (2, L, ...). `len` positions are filled at every
    depth (the shared length), except the deeper depths of exited tokens still in `pending`
    (written by `_flush` when first read)."""

    def __init__(self, model, B, device, dtype):
        cfg = model.config
        self.n_attn = len(model.block(0).attentions())
        hd = cfg.n_embd // cfg.n_head
        shape = (cfg.n_layer, self.n_attn, B, cfg.n_head, cfg.block_size, hd)
        self.kv = torch.empty((2,) + shape, device=device, dtype=dtype)
        self.k, self.v = self.kv[0], self.kv[1]
        self.len = 0
        self.pending = []                   # [_Frozen]: exited tokens lacking deeper K/V
        self.pending_next = cfg.n_layer     # the smallest depth a pending token lacks

    def slots(self, l, start, end, rows=None, pos=None):
        """One KVSlot per attention module of depth l (the `caches` a Block takes)."""
        return [KVSlot(self.k[l, i], self.v[l, i], start, end, rows, pos)
                for i in range(self.n_attn)]

    def put_frozen_all(self, lo, hi, i, pos, kv):
        """Write kv (2, B, nh, hd), every row's K and V at position pos, into attention i at
        depths lo..hi-1: one copy (put_frozen with rows None)."""
        self.kv[:, lo:hi, i, :, :, pos] = kv[:, None].to(self.kv.dtype)

    def put_frozen(self, lo, hi, i, rows, pos, k, v):
        """Write k, v (N, nh, 1, hd) of N exited tokens into attention i at depths lo..hi-1 (the
        same K/V at each: a shared block's one projection). Token j is row rows[j] (rows None:
        row j, N = B) at position pos[j] (pos an int: every token at that position)."""
        if rows is None:
            return self.put_frozen_all(lo, hi, i, pos, torch.stack((k, v))[..., 0, :])
        for store, t in ((self.k, k), (self.v, v)):
            t = t[:, :, 0].to(store.dtype)          # (N, nh, hd); autocast's bf16 -> cache's
            if isinstance(pos, int):
                store[lo:hi, i, rows, :, pos] = t
            else:
                store[lo:hi, i].permute(1, 3, 0, 2, 4)[rows, pos] = t.unsqueeze(1)


class _Frozen:
    """Exited tokens whose K/V at depths next..L-1 are not written yet: frozen states x (N, C),
    rows (N,) or None (every row, N = B), pos (N,) or an int (all at that position)."""
    __slots__ = ("x", "rows", "pos", "next")

    def __init__(self, x, rows, pos, nxt):
        self.x, self.rows, self.pos, self.next = x, rows, pos, nxt


class KVSlot:
    """What CausalSelfAttention sees as `cache`: one attention module at one depth.

    Contiguous (pos None): the T new keys of `rows` (all rows if None; a subset only with
    T = 1) go to positions start..start+T-1; the queries see keys 0..end-1 causally. Packed
    (rows, pos (N,)): the queries are N tokens of one sequence (1, N), token j being row rows[j]
    at position pos[j]; it sees the keys of its own row at positions <= pos[j] (every row's
    keys 0..end-1 laid out as one sequence of B * end, masked)."""
    __slots__ = ("k", "v", "start", "end", "rows", "pos")

    def __init__(self, k, v, start, end, rows=None, pos=None):
        self.k, self.v, self.start, self.end = k, v, start, end
        self.rows, self.pos = rows, pos

    def attend(self, q, k, v):
        """Store k, v (R, nh, T, hd) of the new tokens; attend with q (R, nh, T, hd) over all
        keys they see -> (R, nh, T, hd)."""
        sdpa = F.scaled_dot_product_attention
        end = self.end
        if self.pos is not None:                    # packed: q, k, v (1, nh, N, hd)
            self.k[self.rows, :, self.pos] = k[0].transpose(0, 1).to(self.k.dtype)
            self.v[self.rows, :, self.pos] = v[0].transpose(0, 1).to(self.v.dtype)
            B, nh, _, hd = self.k.shape
            K, V = (t[:, :, :end].transpose(0, 1).reshape(1, nh, B * end, hd)
                    for t in (self.k, self.v))
            key = torch.arange(B * end, device=q.device)
            mask = (((key // end)[None] == self.rows[:, None])
                    & ((key % end)[None] <= self.pos[:, None]))                # (N, B * end)
            return sdpa(q, K, V, attn_mask=mask[None, None])
        T, s = q.size(2), self.start
        if self.rows is None:
            self.k[:, :, s:s + T], self.v[:, :, s:s + T] = k, v
            K, V = self.k[:, :, :end], self.v[:, :, :end]
            if T == 1:
                return sdpa(q, K, V)
            if T == end:
                return sdpa(q, K, V, is_causal=True)
            mask = torch.ones(T, end, dtype=torch.bool, device=q.device).tril(end - T)
            return sdpa(q, K, V, attn_mask=mask)
        # a decode step (T = 1) of the rows still running: gather their keys and values (a
        # copy of R rows reads less memory than attending over every row of the batch with
        # padded queries, measured for 1..7 of 8 rows at the benchmark's shape)
        rows = self.rows
        self.k[rows, :, s:s + 1] = k.to(self.k.dtype)      # index_put: no autocast cast
        self.v[rows, :, s:s + 1] = v.to(self.v.dtype)
        return sdpa(q, self.k[:, :, :end].index_select(0, rows),
                    self.v[:, :, :end].index_select(0, rows))


# ----------------------------------------------------------------------------------------------
# pieces shared by the three modes


def _rope_at(model, pos):
    """RoPE tables for positions pos (R, n): (cos, sin) (R, 1, n, hd/2), or None."""
    if model.config.pos_encoding != "rope":
        return None
    return model.rope_cos[pos][:, None], model.rope_sin[pos][:, None]


def _rope_range(model, p0, n):
    """RoPE tables for positions p0..p0+n-1: (cos, sin) (n, hd/2), or None."""
    if model.config.pos_encoding != "rope":
        return None
    return model.rope_cos[p0:p0 + n], model.rope_sin[p0:p0 + n]


def _head_fn(model):
    """-> logits(x (..., C)) -> (..., V) fp32: ln_f then the tied lm_head (with its bias), the
    ops F.layer_norm / F.linear dispatch to, called directly, the parameters looked up once per
    generate. On one decode row each op's dispatch, not its arithmetic, is the cost: a decode
    step runs this head after every layer."""
    ln, lm = model.transformer.ln_f, model.lm_head
    shape, w, b, eps, W, Wb = ln.normalized_shape, ln.weight, ln.bias, ln.eps, lm.weight, lm.bias
    Wt = W.t()

    def logits(x):
        h = torch.native_layer_norm(x, shape, w, b, eps)[0]
        if x.dim() != 2:
            lg = F.linear(h, W, Wb)
        else:
            lg = torch.mm(h, Wt) if Wb is None else torch.addmm(Wb, h, Wt)
        return lg if lg.dtype == torch.float32 else lg.float()
    return logits


def _run_layers(model, cache, x, p0, lo, hi, layers=None):
    """Blocks lo..hi-1 on every row of x (B, n, C) at positions p0..p0+n-1; writes their K/V.
    A one-token step (n = 1) runs through `layers` (a kernel_for class) when given."""
    if layers is not None and x.size(1) == 1:
        run, h = layers.begin(cache, p0).run, x[:, 0]
        for l in range(lo, hi):
            h = run(l, h, None)
        return h[:, None]
    rope = _rope_range(model, p0, x.size(1))
    end = p0 + x.size(1)
    for l in range(lo, hi):
        x, _ = model.block(l)(x, rope, cache.slots(l, p0, end))
    return x


# ----------------------------------------------------------------------------------------------
# the layers of one decode step (T = 1) on the rows still running: any block, or the kernel of
# a shared pre-ln block


class _Blocks:
    """Decode-step layers through the model's own Block modules (every block type), built once
    per generate; `begin` starts a step at position p0. x (R, C) are the rows still running
    (`rows`: their batch rows, None = all). The head of a state leaving a layer is `head`
    (ln_f, lm_head); exited rows' deeper K/V are deferred (`_defer`) at the end of the step
    and projected when a later token first reads them (`_flush`)."""

    def __init__(self, model, head):
        self.model, self.head = model, head

    def begin(self, cache, p0):
        self.cache, self.p0, self.rope = cache, p0, _rope_range(self.model, p0, 1)
        self.frozen = []                            # (x (n, C), rows (n,) | None, depth)
        return self

    def run(self, l, x, rows):
        """Layer l on x (R, C) -> (R, C); writes its K/V for batch rows `rows`."""
        x, _ = self.model.block(l)(x[:, None], self.rope,
                                   self.cache.slots(l, self.p0, self.p0 + 1, rows))
        return x[:, 0]

    def logits(self, x):
        """The head of states x (R, C) leaving a layer -> (R, V) fp32."""
        return self.head(x)

    def exit(self, x, ex, rows, depth):
        """Rows ex (indices into x (R, C), the last logits' input; None: all), batch rows
        `rows`, exit at depth: their K/V of depths depth..L-1."""
        self.frozen.append((x if ex is None else x[ex], rows, depth))

    def keep(self, idx):
        """Only the rows idx of the last logits' input run on."""

    def finish(self):
        for x, rows, depth in self.frozen:
            _defer(self.model, self.cache, x, rows, self.p0, depth)


class _SharedPreLN(_Blocks):
    """Decode-step layers of a shared-weight pre-ln block with GPT-2 attention (what
    `kernel_for` accepts), written out with the block's parameters. ln_1's affine is folded
    into c_attn and ln_f's into the head: [c_attn; lm_head] (3C + V, C) is one matmul of the
    normalised state, which gives a layer's exit-head logits *and* the next layer's q, k, v
    (the head costs V more rows of that matmul instead of a layer norm and a matmul of its
    own), and a row that exits has its K/V for every deeper depth right there (shared
    weights: no deferral, no second projection). Without a check a layer multiplies only the
    c_attn rows. Equal to Block.forward and the head up to the fp32 rounding of the fold
    (tests: atol 1e-5)."""

    def __init__(self, model, head):
        super().__init__(model, head)
        import model as model_lib
        self.rotate = model_lib.rope_rotate
        blk, cfg = model.block(0), model.config
        self.ln_2, self.mlp, self.c_proj = blk.ln_2, blk.mlp, blk.attn.c_proj
        self.C, self.nh, self.L, self.eps = cfg.n_embd, cfg.n_head, cfg.n_layer, blk.ln_1.eps
        w, b = zip(_fold(blk.attn.c_attn, blk.ln_1), _fold(model.lm_head, model.transformer.ln_f))
        w, b = torch.cat(w), torch.cat(b)                               # (3C + V, C), (3C + V,)
        # zero rows up to a row of a multiple of 64 bytes (N = 3C + V + pad): q, k, v read from
        # the fused output are then as aligned as c_attn's own (R, 3C) output, and attention on
        # them gives the same bits (an odd row length gave other last bits: tests)
        pad = -w.size(0) % (64 // w.element_size())
        self.w, self.b = F.pad(w, (0, 0, 0, pad)), F.pad(b, (0, pad))   # (N, C), (N,)
        self.wt = self.w.t()                        # addmm's (C, N) operand
        self.wt_qkv, self.b_qkv = self.wt[:, :3 * self.C], self.b[:3 * self.C]
        self.lg_cols = slice(3 * self.C, 3 * self.C + model.lm_head.weight.size(0))
        self.qkv = None            # (R, 3C | N): q, k, v of the last logits' input (its
                                   # first 3C columns), for the next layer
        self.bufs, self.turn = None, 0  # two (out (R, N), its logits view), used in turn,
        self.buf_rows = None            # for R rows (logits' first call)
        self.autocast = torch.is_autocast_enabled(self.w.device.type)

    @staticmethod
    def accepts(model):
        import model as model_lib
        blk = model.block(0)
        return (model.config.share_weights and not model.training
                and type(blk) is model_lib.PreLNBlock
                and type(blk.attn) is model_lib.CausalSelfAttention
                and blk.ln_1.eps == model.transformer.ln_f.eps
                and not any(m._forward_hooks or m._forward_pre_hooks         # they would not
                            for m in _SharedPreLN.bypassed(model)))          # see decode steps

    @staticmethod
    def bypassed(model):
        """The modules whose forward the kernel does not call."""
        blk = model.block(0)
        return blk, blk.attn, blk.attn.c_attn, blk.attn.c_proj, blk.ln_1

    @staticmethod
    def probe_key(model):
        """What `agrees` depends on: the forward code of the block's parts (their classes', and
        an instance's own `forward` of the modules the kernel bypasses), the
        parameters (storage and in-place version) of the block, ln_f and lm_head, and autocast.
        Inference tensors (a model built under torch.inference_mode) have no version: a fresh
        object each time, so such a model is probed at every generate."""
        blk = model.block(0)
        code = (type(blk).forward, type(blk.attn).forward, type(blk.attn).qkv,
                type(blk.mlp).forward, type(blk.ln_1).forward)
        code += tuple(vars(m).get("forward") for m in _SharedPreLN.bypassed(model))
        params = [(p.data_ptr(), object() if p.is_inference() else p._version, p.dtype)
                  for m in (blk, model.transformer.ln_f, model.lm_head) for p in m.parameters()]
        dev = model.lm_head.weight.device.type
        return code, tuple(params), torch.is_autocast_enabled(dev)

    def begin(self, cache, p0):
        self.qkv = None
        return super().begin(cache, p0)

    def _norm(self, x):
        """ln_1 / ln_f without their affines (folded into w) of x (R, C). Here and in the
        matmuls the op F.layer_norm / F.linear dispatch to is called directly (as in _head_fn):
        a decode row's cost is the dispatch, and the exit check adds these calls per layer."""
        return torch.native_layer_norm(x, (self.C,), None, None, self.eps)[0]

    def _qkv(self, x):
        """q, k, v of states x (R, C) -> (R, 3C)."""
        return torch.addmm(self.b_qkv, self._norm(x), self.wt_qkv)

    def _split(self, qkv, parts):
        """qkv (R, 3C [+ V]) -> the last `parts` of q, k, v (columns up to 3C), each
        (R, nh, 1, hd), RoPE applied."""
        R, C = qkv.size(0), self.C
        out = list(qkv[:, (3 - parts) * C:3 * C].view(R, parts, self.nh, 1, C // self.nh)
                   .unbind(1))
        if self.rope is not None:
            out[-2] = self.rotate(out[-2], *self.rope)
            if parts == 3:
                out[0] = self.rotate(out[0], *self.rope)
        return out

    def run(self, l, x, rows):
        return self._layer(x, self.cache.slots(l, self.p0, self.p0 + 1, rows)[0])

    def _layer(self, x, slot):
        """The block on x (R, C) attending through slot (a KVSlot) -> (R, C)."""
        qkv, self.qkv = self.qkv, None
        if qkv is None:
            qkv = self._qkv(x)
        q, k, v = self._split(qkv, 3)
        y = slot.attend(q, k, v)
        mid = x + F.linear(y.reshape(x.shape), self.c_proj.weight, self.c_proj.bias)
        return mid + self.mlp(self.ln_2(mid))

    @torch.no_grad()
    def agrees(self):
        """The kernel's layer and head against the Block module and _head_fn on 4 random states
        (a decode step at position 0, empty cache): False when they differ by more than the
        fold's rounding, e.g. after an edit of PreLNBlock or CausalSelfAttention that the
        kernel does not know about (it would decode a different model)."""
        p = self.w
        x = torch.randn(4, self.C, generator=torch.Generator().manual_seed(0)).to(p.device, p.dtype)
        self.begin(None, 0)

        def slot():
            kv = torch.zeros(2, 4, self.nh, 1, self.C // self.nh, device=p.device, dtype=p.dtype)
            return KVSlot(kv[0], kv[1], 0, 1)
        want = (self.model.block(0)(x[:, None], self.rope, [slot()])[0][:, 0], self.head(x))
        got = (self._layer(x, slot()), self.logits(x))
        self.qkv = self.bufs = self.buf_rows = None                     # the probe's 4 rows
        loose = p.dtype != torch.float32 or self.autocast
        tol = 5e-2 if loose else 1e-4
        return all(torch.allclose(g.float(), w.float(), rtol=tol, atol=tol * float(w.abs().max()))
                   for g, w in zip(got, want))

    def logits(self, x):
        """As _Blocks.logits. For the row count of the step's first call (every row of the
        batch) an fp32 model's result is a view into one of two buffers used in turn (no
        allocation, no slicing per call): valid until the next-but-one call, what a caller
        keeps longer it copies. Fewer rows (after exits) and autocast (which an out= call
        bypasses) get a new tensor, and a model in another dtype its fp32 copy."""
        R = x.size(0)
        if R == self.buf_rows:
            self.turn ^= 1
            out, lg = self.bufs[self.turn]
            torch.addmm(self.b, self._norm(x), self.wt, out=out)        # (R, N)
        else:
            out = torch.addmm(self.b, self._norm(x), self.wt)
            lg = out[:, self.lg_cols]
            if self.buf_rows is None and not self.autocast:
                # two allocations: a buffer at an unaligned offset into one shared
                # allocation gave other last bits (tests)
                self.bufs = [(o, o[:, self.lg_cols]) for o in (out, torch.empty_like(out))]
                self.buf_rows = R
        self.qkv = out                              # _split reads columns < 3C
        return lg if lg.dtype == torch.float32 else lg.float()

    def exit(self, x, ex, rows, depth):
        if self.qkv is None:                        # no head ran (a head-free confidence)
            self.qkv = self._qkv(x)
        qkv = self.qkv if ex is None else self.qkv[ex]
        if rows is None and self.rope is None:      # k, v as they are: (2, B, nh, hd), a view
            kv = qkv[:, self.C:3 * self.C].view(-1, 2, self.nh, self.C // self.nh).transpose(0, 1)
            return self.cache.put_frozen_all(depth, self.L, 0, self.p0, kv)
        k, v = self._split(qkv, 2)
        self.cache.put_frozen(depth, self.L, 0, rows, self.p0, k, v)

    def keep(self, idx):
        if self.qkv is not None:
            self.qkv = self.qkv[idx]

    def finish(self):
        pass


def _fold(linear, ln):
    """(weight (N, C), bias (N,)) of linear(ln(x)) as a function of the normalised x: ln's
    gain scales the weight's columns, its bias moves into the linear's bias (fp32, then the
    weight's dtype)."""
    w = linear.weight.float()
    b = torch.zeros(w.size(0), device=w.device) if linear.bias is None else linear.bias.float()
    if ln.bias is not None:
        b = b + w @ ln.bias.float()
    if ln.weight is not None:
        w = w * ln.weight.float()
    return w.to(linear.weight.dtype), b.to(linear.weight.dtype)


def kernel_for(model, head):
    """The decode-step layers of model, built once per generate (head: _head_fn(model)): a
    _SharedPreLN when it accepts the model and agrees with its Block module on a probe (an
    edited block is never silently replaced: it warns and decodes with the Block modules),
    else _Blocks."""
    if _SharedPreLN.accepts(model):
        kernel = _SharedPreLN(model, head)
        key = _SharedPreLN.probe_key(model)
        if getattr(model, "_decode_probe", (None,))[0] != key:       # probe once per state
            model._decode_probe = (key, kernel.agrees())
        if model._decode_probe[1]:
            return kernel
        warnings.warn("decode: the shared pre-ln kernel disagrees with the model's block "
                      "(edited block or attention?); decoding with the Block modules instead")
    return _Blocks(model, head)


# ----------------------------------------------------------------------------------------------
# early exit: deferred K/V of exited tokens, the exit check, the decode step and the prompt


def _defer(model, cache, x, rows, pos, lo):
    """Tokens that exited before depth lo, frozen states x (N, C) at rows / pos (see _Frozen):
    their K/V at depths lo..L-1 are written only when a later token first reads that depth."""
    if lo < model.config.n_layer:
        cache.pending.append(_Frozen(x, rows, pos, lo))
        cache.pending_next = min(cache.pending_next, lo)


def _flush(model, cache, l):
    """Before depth l attends: write the K/V of every pending token that lacks depth l, all of
    them in one projection per depth. With shared weights that projection is the token's K/V at
    every remaining depth (written to all, the token leaves `pending`); without, each depth's
    own block projects it when first read."""
    L = model.config.n_layer
    while cache.pending_next <= l:
        j = cache.pending_next
        todo = [f for f in cache.pending if f.next <= (l if model.config.share_weights else j)]
        x = todo[0].x if len(todo) == 1 else torch.cat([f.x for f in todo])
        rope = None
        if model.config.pos_encoding == "rope":
            pos = torch.cat([torch.full((f.x.size(0),), f.pos, device=x.device)
                             if isinstance(f.pos, int) else f.pos for f in todo])
            rope = _rope_at(model, pos[:, None])
        kvs = model.block(j).frozen_kv(x[:, None], rope)             # [(k, v) (N, nh, 1, hd)]
        a = 0
        for f in todo:
            b = a + f.x.size(0)
            hi = L if model.config.share_weights else f.next + 1
            for i, (k, v) in enumerate(kvs):
                cache.put_frozen(f.next, hi, i, f.rows, f.pos, k[a:b], v[a:b])
            f.next, a = hi, b
        cache.pending = [f for f in cache.pending if f.next < L]
        cache.pending_next = min((f.next for f in cache.pending), default=L)


class _HeadStats:
    """The heads.HeadOut fields a confidence reads, from probs (N, V), each computed only when
    read: max-prob costs one amax, not a top-2."""
    ce = p_target = None

    def __init__(self, probs):
        self.probs = probs

    @property
    def p_max(self):
        return self.probs.amax(dim=-1)

    @property
    def p_second(self):
        return self.probs.topk(2, dim=-1).values[:, 1]

    @property
    def argmax(self):
        return self.probs.argmax(dim=-1)


def _exit_check(model, rule, threshold, device):
    """-> the _Measure that decides exits under `rule` at `threshold` for one generate, or
    None when the rule can never fire (exits.never_exits: decoding then skips the heads)."""
    if exits.never_exits(rule, model.config.confidence, threshold):
        return None
    return _Measure(model, rule, threshold, device)


# A single row's confidence is read as Python floats (exits' from_row) on CPU when the row has
# at most this many logits: there a torch op called after a layer's matmuls (its code evicted
# from the caches by the weights streamed through them) costs ~10 us, so one tolist() and a
# pass of math.exp over a few hundred values beat softmax + amax + item.
_ROW_MAX_VALUES = 2048
# A float64 confidence within this of the threshold is too close to call for the fp32 tensor
# form it stands for (fp32 softmax over <= _ROW_MAX_VALUES values is off by far less); there
# the tensor form decides, so the decisions are exactly the fp32 rule's.
_ROW_TOL = 1e-3


def _max_fired(fast, scalar, rule, t, threshold):
    """_Measure.fired for a rule with a scalar form (monotone: the rows fire that a float
    compare passes) and a from_logits confidence: the rows' confidences read once as their
    largest value, so that a layer where no row exits (the common case) costs one reduction
    and no index ops; t: float(threshold)."""
    def fired(l, x_in, x_out, logits):
        conf = fast(logits)                                                 # (R,)
        top = conf.max().item()
        if top == top:                              # a NaN max says nothing of the other rows
            if not scalar(top, t):
                return []
            if conf.size(0) == 1:
                return [0]
        return rule(conf, threshold).nonzero()[:, 0].tolist()
    return fired


def _row_fired(row, scalar, t, otherwise):
    """_Measure.fired for a single row on CPU: its confidence from_row (Python floats from one
    tolist()), decided by the rule's scalar form; within _ROW_TOL of the threshold t (or NaN)
    `otherwise` (the tensor form) decides. A closure over its few names: in a decode step the
    check runs right after a layer has streamed its weights through the caches, where every
    attribute and global looked up costs a cache miss."""
    tol = _ROW_TOL

    def fired(l, x_in, x_out, logits):
        if logits.size(0) == 1:
            c = row(logits.tolist()[0])
            if abs(c - t) > tol:
                return [0] if scalar(c, t) else []
        return otherwise(l, x_in, x_out, logits)
    return fired


class _Measure:
    """config.confidence (an exits.CONFIDENCES entry) under `rule` at `threshold` while
    decoding, built once per generate (`begin` starts a step), with what it carries across
    layers for the rows still running: the previous layer's logits (prev), the earlier layers'
    argmax (history). `fired` is picked here once, so a layer's check runs no branch on how to
    check."""

    def __init__(self, model, rule, threshold, device):
        self.model, self.meas = model, exits.CONFIDENCES[model.config.confidence]
        self.rule = rule
        # the threshold as a 0-dim fp32 tensor: the comparison a rule makes with a Python float
        # (in the confidence's fp32) without wrapping the float at every layer
        self.threshold = torch.tensor(threshold, dtype=torch.float32, device=device)
        self.needs_head = self.meas.head            # False: trigger takes logits None
        self.fast = self.meas.from_logits
        scalar, row = rule.scalar, self.meas.from_row
        if self.fast is not None and scalar is not None:
            # an instance attribute over the method below: closures over values, not over
            # self (no reference cycle keeps a finished generate's measure alive)
            t = float(self.threshold)               # the fp32 threshold's value
            self.fired = _max_fired(self.fast, scalar, rule, t, self.threshold)
            if (row is not None and torch.device(device).type == "cpu"
                    and model.lm_head.weight.size(0) <= _ROW_MAX_VALUES):
                self.fired = _row_fired(row, scalar, t, self.fired)
        self.begin()

    def begin(self):
        """A new step (or prompt): no rows' history yet. -> self"""
        self.prev, self.hist = None, []
        return self

    def fired(self, l, x_in, x_out, logits):
        """Layer l's exit decision -> the indices (list of int, ascending) of the rows of
        x_out (R, C) that exit; a host read or two. Same decisions as `trigger` (tests). Under
        a rule with a scalar form and a from_logits confidence, __init__ puts a faster one in
        its place (_max_fired, _row_fired)."""
        return self.trigger(l, x_in, x_out, logits).nonzero()[:, 0].tolist()

    def trigger(self, l, x_in, x_out, logits):
        """Layer l's exit decision -> bool (N,) from its logits (N, V) fp32 and the residual
        stream x_in, x_out (N, C) entering / leaving it (see exits.register_confidence)."""
        if self.fast is not None:
            return self.rule(self.fast(logits), self.threshold)
        m, model = self.meas, self.model
        stats = None if logits is None else _HeadStats(torch.softmax(logits, dim=-1))
        cin = exits.ConfIn(stats, layer=l, config=model.config, hist=self.hist)
        if m.logit_stat is not None and not (m.prev and self.prev is None):
            cin.stat = m.logit_stat(logits, self.prev if m.prev else None)
        if m.state:
            cin.x_in, cin.x_out = x_in, x_out
        if m.learned:
            ln = model.transformer.ln_f
            h = F.layer_norm(x_out, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
            cin.exit_logit = model.exit_classifier(h).squeeze(-1).float()
        if m.prev:
            self.prev = logits
        if m.history:
            self.hist.append(cin.argmax)
        return self.rule(m(cin), self.threshold)

    def keep(self, idx):
        """Only the rows idx (k,) keep running."""
        self.prev = None if self.prev is None else self.prev[idx]
        self.hist = [a[idx] for a in self.hist]


def _run_exit_step(model, cache, x, p0, head, measure, layers):
    """One decode step with per-token early exit: x (B, 1, C) at position p0 -> (logits (B, V)
    fp32, exit depth (B,), or a float when every row exits at one depth). `layers`
    (kernel_for's) runs the layers; each layer's head runs only on the rows still running, and
    exited rows leave the batch (their deeper K/V: layers.exit). measure: _exit_check's."""
    L, B = model.config.n_layer, x.size(0)
    fired_at, layers = measure.begin().fired, layers.begin(cache, p0)
    run, head_of = layers.run, layers.logits if measure.needs_head else None
    rows, x = None, x[:, 0]                         # rows None: every row still runs
    exited = []                                     # (rows (n,) | None, logits (n, V), depth)
    for l in range(L - 1):
        if cache.pending_next <= l:
            _flush(model, cache, l)
        x_in, x = x, run(l, x, rows)                                        # (R, C)
        lg = head_of(x) if head_of else None                                # (R, V)
        fired = fired_at(l, x_in, x, lg)            # rows of x that exit here
        if not fired:
            continue
        R = x.size(0)
        if len(fired) == R:                         # every running row exits here
            layers.exit(x, None, rows, l + 1)
            exited.append((rows, head(x) if lg is None else lg.clone(), l + 1))
            break
        if rows is None:
            rows = torch.arange(B, device=x.device)
        ex = torch.tensor(fired, device=x.device)
        keep = torch.tensor(sorted(set(range(R)).difference(fired)), device=x.device)
        layers.exit(x, ex, rows[ex], l + 1)
        exited.append((rows[ex], head(x[ex]) if lg is None else lg[ex], l + 1))
        rows, x = rows[keep], x[keep]
        layers.keep(keep)
        measure.keep(keep)
    else:                                           # the last layer: every row left exits
        if cache.pending_next <= L - 1:
            _flush(model, cache, L - 1)
        exited.append((rows, head(run(L - 1, x, rows)), L))
    layers.finish()
    if len(exited) == 1:                            # the whole batch left at one depth
        return exited[0][1], float(exited[0][2])
    logits = torch.empty(B, exited[0][1].size(-1), device=x.device)
    depth = torch.empty(B, device=x.device)
    for r, lg, d in exited:
        logits[r], depth[r] = lg, float(d)
    return logits, depth


def _run_exit(model, cache, x, p0, head, measure, layers):
    """Prompt encoding with per-token early exit: x (B, T, C) at positions p0..p0+T-1 ->
    (logits (B, V) fp32 and exit depth (B,) of each row's last position).

    Until the first exit the (B, T) batch runs as is. Then the tokens still running are packed
    into one sequence xs (1, N, C) with their rows (N,) and positions (N,); each attends to its
    own row's keys (KVSlot packed mode), so deeper blocks run on exactly the N running tokens.
    Exited tokens' deeper K/V are written (`_flush`) before a later token reads them."""
    L, (B, T, _) = model.config.n_layer, x.shape
    if T == 1:
        return _run_exit_step(model, cache, x, p0, head, measure, layers)
    measure.begin()
    dev, last = x.device, p0 + T - 1
    logits_out = torch.empty(B, model.config.vocab_size, device=dev)
    depth = torch.full((B,), float(L), device=dev)
    rows = pos = None                               # None: not packed yet, all (B, T) run
    rope, xs = _rope_range(model, p0, T), x
    for l in range(L):
        _flush(model, cache, l)
        h_in = xs.flatten(0, 1)                                             # (B*T | N, C)
        if rows is None:
            xs, _ = model.block(l)(xs, rope, cache.slots(l, p0, last + 1))
            h = xs.flatten(0, 1)                                            # (B*T, C)
        else:
            slots = cache.slots(l, p0, last + 1, rows=rows, pos=pos)
            xs, _ = model.block(l)(xs, _rope_at(model, pos[None]), slots)
            h = xs[0]                                                       # (N, C)
        if l == L - 1:                              # everyone left exits; last positions only
            if rows is None:
                logits_out = head(xs[:, -1])
            else:
                at_last = pos == last
                logits_out[rows[at_last]] = head(h[at_last])
            break
        lg = head(h) if measure.needs_head else None                        # (N, V)
        trig = measure.trigger(l, h_in, h, lg)                              # (N,)
        if not bool(trig.any()):
            continue
        if rows is None:
            rows = torch.arange(B, device=dev).repeat_interleave(T)
            pos = torch.arange(p0, p0 + T, device=dev).repeat(B)
        ex_rows, ex_pos = rows[trig], pos[trig]
        _defer(model, cache, h[trig], ex_rows, ex_pos, l + 1)
        at_last = ex_pos == last
        logits_out[ex_rows[at_last]] = (lg[trig][at_last] if lg is not None
                                        else head(h[trig][at_last]))
        depth[ex_rows[at_last]] = float(l + 1)
        keep = ~trig
        if not bool(keep.any()):
            break
        rows, pos, xs = rows[keep], pos[keep], h[keep][None]
        measure.keep(keep)
    return logits_out, depth


def _probs(logits, temperature, top_k):
    """Sampling distribution (N, V) of logits (N, V) at temperature > 0 with optional top-k."""
    logits = logits / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], -float("inf"))
    return F.softmax(logits, dim=-1)


def _pick(logits, temperature, top_k, generator):
    """Next token (N, 1) from logits (N, V): argmax at temperature 0, else a sample."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    return torch.multinomial(_probs(logits, temperature, top_k), 1, generator=generator)


# ----------------------------------------------------------------------------------------------
# self-speculative decoding


def _speculate(model, cache, head, layers, tok, d, k, temperature, top_k, generator):
    """One draft-and-verify round. tok (B, 1) is the newest token, not yet in the cache (at
    position cache.len). Returns (new tokens (B, m + 1), their verifier logits (B, m + 1, V),
    m accepted draft tokens); the cache then holds tok and the m accepted tokens."""
    L, p0 = model.config.n_layer, cache.len
    greedy = temperature == 0
    hs, drafts, qs, cur = [], [], [], tok
    for j in range(k + 1):                          # k drafts; the last token only runs layers 1..d
        x, _ = model._embed(cur, p0 + j)
        h = _run_layers(model, cache, x, p0 + j, 0, d, layers)
        hs.append(h)
        if j == k:
            break
        lg = head(h[:, -1])
        if greedy:
            cur = lg.argmax(dim=-1, keepdim=True)
        else:
            q = _probs(lg, temperature, top_k)
            cur = torch.multinomial(q, 1, generator=generator)
            qs.append(q)
        drafts.append(cur)
    h = _run_layers(model, cache, torch.cat(hs, dim=1), p0, d, L)         # (B, k + 1, C)
    lg = head(h)                                                            # (B, k + 1, V)
    B = tok.size(0)
    D = torch.cat(drafts, dim=1) if drafts else tok.new_empty(B, 0)         # (B, k)
    if greedy:
        target = lg.argmax(dim=-1)                                          # (B, k + 1)
        n_ok = torch.cumprod((D == target[:, :k]).long(), dim=1).sum(1)     # (B,)
        m = int(n_ok.min())
        nxt = target[:, m:m + 1]
    else:
        p = _probs(lg.flatten(0, 1), temperature, top_k).view(B, k + 1, -1)
        Q = torch.stack(qs, dim=1) if qs else p.new_empty(B, 0, p.size(-1))
        n_ok, own = speculative_accept(p, Q, D, generator)
        m = int(n_ok.min())                         # every row keeps the shortest prefix
        nxt = (torch.where(n_ok > m, D[:, m], own) if m < k else own)[:, None]
    cache.len = p0 + m + 1
    return torch.cat([D[:, :m], nxt], dim=1), lg[:, :m + 1], m


def speculative_accept(p, q, drafts, generator=None):
    """Speculative sampling's accept rule, per row. p (B, k + 1, V) the verifier's and q (B, k, V)
    the draft's distributions, drafts (B, k) drawn from q. Draft j is kept with probability
    min(1, p_j(x) / q_j(x)) while all before it were kept. Returns (n_ok (B,) drafts kept,
    own (B,) the token after them: from normalise(max(0, p - q)) at the first rejection, from
    p_k when all k were kept). Then drafts[:n_ok] + own are a sample of the full model's p."""
    B, k = drafts.shape
    rows = torch.arange(B, device=p.device)
    if k:
        p_x = p[:, :k].gather(2, drafts[..., None])[..., 0]
        q_x = q.gather(2, drafts[..., None])[..., 0]
        u = torch.rand(B, k, generator=generator, device=p.device)
        n_ok = torch.cumprod((u * q_x < p_x).long(), dim=1).sum(1)          # u < p / q
    else:
        n_ok = torch.zeros(B, dtype=torch.long, device=p.device)
    q_pad = torch.cat([q, torch.zeros_like(p[:, :1])], dim=1)               # q_k = 0: bonus p_k
    resid = (p[rows, n_ok] - q_pad[rows, n_ok]).clamp_min(0)                # (B, V)
    total = resid.sum(-1, keepdim=True)
    resid = torch.where(total > 0, resid / total.clamp_min(1e-30), p[rows, n_ok])
    return n_ok, torch.multinomial(resid, 1, generator=generator)[:, 0]


# ----------------------------------------------------------------------------------------------
# the entry point


def _mean_depth(depths, B):
    """Mean of the steps' exit depths: each a (B,) tensor or a float (every row)."""
    if not depths:
        return float("nan")
    rows = [d for d in depths if not isinstance(d, float)]
    total = sum(d for d in depths if isinstance(d, float)) * B
    if rows:
        total += float(torch.stack(rows).sum())
    return total / (len(depths) * B)


def _check(model, idx, max_new_tokens, temperature, top_k, draft_layers, draft_tokens, early):
    L = model.config.n_layer
    if idx.dim() != 2 or 0 in idx.shape:
        raise ValueError(f"idx must be (B, T) token ids with B, T >= 1, got shape "
                         f"{tuple(idx.shape)}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
            and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if draft_layers is None:
        return
    if early:
        raise ValueError("draft_layers (self-speculative decoding) and early exit "
                         "(exit_threshold / config.early_exit) are exclusive")
    if not isinstance(draft_layers, int) or not 1 <= draft_layers < L:
        raise ValueError(f"draft_layers must be an int in 1..{L - 1} (n_layer {L}), "
                         f"got {draft_layers!r}")
    if not isinstance(draft_tokens, int) or draft_tokens < 1:
        raise ValueError(f"draft_tokens must be an int >= 1, got {draft_tokens!r}")


def generate(model, idx, max_new_tokens, *, temperature=1.0, top_k=None, exit_threshold=None,
             draft_layers=None, draft_tokens=4, generator=None, step_logits=None):
    """idx (B, T) int64 -> (B, T + max_new_tokens); see the module docstring for the modes.

    temperature 0: greedy; top_k: sample among the k most likely; generator: torch.Generator
    for sampling (and the speculative accept test). step_logits: a list that receives, for every
    new token, the (B, V) fp32 logits it was chosen from (before temperature / top-k).

    Decoding runs under torch.inference_mode (no autograd or version-counter bookkeeping per op:
    10-14 % less time per decode step on the CPU decode benchmark's model, where a step is a few
    hundred small ops); what it returns is built outside it, so the tokens and step_logits are
    ordinary tensors that can enter autograd later (e.g. as training data)."""
    lg = None if step_logits is None else []
    with torch.inference_mode():
        out = _generate(model, idx, max_new_tokens, temperature, top_k, exit_threshold,
                        draft_layers, draft_tokens, generator, lg)
    if lg is not None:
        step_logits.extend(t.clone() for t in lg)
    return torch.cat(out, dim=1)


def _step(model, cache, ctx, p0, head, layers, measure):
    """Run ctx (B, n) at positions p0.. through the model, writing its K/V into cache (the
    caller advances cache.len) -> last position's logits (B, V) fp32, exit depth ((B,) or a
    float for every row). layers: kernel_for's; measure: _exit_check's (None: full depth)."""
    x, _ = model._embed(ctx, p0)
    if measure is not None:
        return _run_exit(model, cache, x, p0, head, measure, layers)
    h = _run_layers(model, cache, x, p0, 0, model.config.n_layer, layers)
    return head(h[:, -1]), float(model.config.n_layer)


def _generate(model, idx, max_new_tokens, temperature, top_k, exit_threshold, draft_layers,
              draft_tokens, generator, step_logits):
    """generate's body (under inference_mode) -> [idx, new tokens (B, n) ...] to concatenate."""
    cfg = model.config
    early = exit_threshold is not None or cfg.early_exit
    _check(model, idx, max_new_tokens, temperature, top_k, draft_layers, draft_tokens, early)
    rule = exits.EXIT_RULES["threshold" if exit_threshold is not None else cfg.exit_mode]
    thr = float(exit_threshold if exit_threshold is not None else cfg.exit_threshold)
    measure = _exit_check(model, rule, thr, idx.device) if early else None
    head = _head_fn(model)
    layers = kernel_for(model, head)
    L, cap = cfg.n_layer, cfg.block_size
    B = idx.size(0)
    dtype = next(model.parameters()).dtype
    cache, depths, out = None, [], [idx]
    n_done, drafted, accepted, rounds = 0, 0, 0, 0
    t0 = t_first = time.perf_counter()

    tok = None                                      # newest token, not yet in the cache
    while n_done < max_new_tokens:
        seq_len = idx.size(1) + n_done
        if tok is not None and draft_layers is not None and seq_len <= cap:
            k = min(draft_tokens, max_new_tokens - n_done - 1, cap - cache.len - 1)
            new, lg, m = _speculate(model, cache, head, layers, tok, draft_layers, k, temperature,
                                    top_k, generator)
            drafted, accepted, rounds = drafted + k, accepted + m, rounds + 1
            new, lg = new[:, :max_new_tokens - n_done], lg[:, :max_new_tokens - n_done]
            if step_logits is not None:
                step_logits.extend(lg.unbind(1))
            depths.extend([float(L)] * new.size(1))
            out.append(new)
            n_done += new.size(1)
            tok = new[:, -1:]
            continue
        if cache is None or seq_len > cap:             # (re)encode the cropped context
            cache = DecodeCache(model, B, idx.device, dtype)
            ctx = torch.cat(out, dim=1)[:, -cap:]
            logits, depth = _step(model, cache, ctx, 0, head, layers, measure)
            cache.len = ctx.size(1)
        else:
            logits, depth = _step(model, cache, tok, cache.len, head, layers, measure)
            cache.len += 1
        if step_logits is not None:
            step_logits.append(logits)
        depths.append(depth)
        tok = _pick(logits, temperature, top_k, generator)
        out.append(tok)
        n_done += 1
        if n_done == 1:                             # the prompt is encoded
            if idx.is_cuda:
                torch.cuda.synchronize()
            t_first = time.perf_counter()
    if idx.is_cuda:
        torch.cuda.synchronize()
    t_end = time.perf_counter()
    dt, dt_decode = t_end - t0, t_end - t_first
    n, nan = max_new_tokens * B, float("nan")
    model.last_generate_stats = {
        "avg_exit_depth": _mean_depth(depths, B),
        "tokens_per_s": n / dt if dt > 0 else nan,
        "new_tokens": n,
        "first_token_s": t_first - t0 if n_done else nan,
        "decode_tokens_per_s": (n - B) / dt_decode if n_done > 1 and dt_decode > 0 else nan,
        "decode_exit_depth": _mean_depth(depths[1:], B),
        "acceptance_rate": accepted / drafted if drafted else nan,
        "tokens_per_verify": (n_done - 1) / rounds if rounds else nan,
    }
    return out
