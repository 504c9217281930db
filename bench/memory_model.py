"""Peak memory of one training step (forward, backward, AdamW step), predicted from the shape.

    python bench.py --memory                       # GPT-2 124M, B=64, T=1024, bf16: every case
    python bench.py --memory --validate            # the same accounting against CPU measurements

What is counted (bytes; a = autocast activation size, 2 for bf16 / 4 for fp32; f = 4):
- static: fp32 parameters (4 P) and AdamW's two moments (8 P), live for the whole step;
- grads: 4 P, allocated during backward (counted in full only in the optimizer phase);
- activations saved for backward, per pre-LN layer (B*T*C units; dropout 0):
    f x2   the residual stream entering ln_1 and ln_2 (LayerNorm keeps its input)
    a x14  ln_1 out (cast, saved by c_attn), q/k/v (3), attention output (= c_proj input: SDPA
           returns it in (B, T, nh, hd) memory order, so .contiguous() copies nothing),
           ln_2 out (cast, saved by c_fc), c_fc out (4, saved by GELU), GELU out (4, c_proj)
  plus LayerNorm mean/rstd (2 x 2 x 4 B*T), the attention logsumexp (4 B*nh*T) and, under
  autocast, one bf16 copy of the block's matmul weights per stored block (a shared block is cast
  once: autocast caches the cast of a leaf for the whole region);
- head buffers, per head computed (one; n_layer with per-layer heads): ln_f statistics, what the
  head keeps for backward (naive: its input cast + the fp32 log-softmax (N, V); checkpoint and
  fused: the fp32 input h (N, C)) and ~36 bytes per token of per-token outputs, plus the
  transient of the head's forward and backward (naive: one / two fp32 (N, V); checkpoint: two /
  three; fused: its logits tiles, two fp32 tiles and two tile casts in backward (one each
  when one tile covers the head), plus
  grad_h / grad_W accumulators and the h / W casts).
Peak = static + the largest of: forward (all activations + the last head's forward transient),
start of backward (all activations + the head's backward transient), the last block's backward
(activations minus one head's buffers, the stream gradient, the block's transient gradients
~ (f + 9a) B*T*C and its parameter gradients) and the optimizer step (all gradients; CPU AdamW
adds two temporaries of the largest parameter, CUDA's fused AdamW none).

Validation (--validate): the same accounting at small shapes on CPU against the measured peak of
live torch CPU allocations, from the allocation events that torch's CPU allocator reports to
the profiler (torch.profiler with profile_memory=True; exact bytes, no RSS noise, no tracemalloc).
The measured step starts from a steady state (parameters and AdamW moments allocated, gradients
None), as every step after the first. CUDA's kernels differ from CPU's (flash attention, fused
AdamW) in ways the model states above; the GPU check (bench.py --gpu-check) measures 124M on a
GPU with max_memory_allocated.
"""
import argparse
import dataclasses
import functools
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

GIB = 2 ** 30
F32 = 4
GPT2_124M = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50304, B=64, T=1024)
# what a "80 GB" H100/A100 leaves to torch's allocator: 81559 MiB total minus ~2 GiB for the
# CUDA context, cuBLAS/NCCL workspaces and allocator fragmentation (an assumption, stated)
BUDGET_80GB = 77.0 * GIB
# cases: (label, GPTConfig overrides); the rows of the table. A cheap-exit mode is one more row.
CASES = [
    ("plain, naive head", dict(head_impl="naive")),
    ("plain, fused head", dict(head_impl="fused")),
    ("shared + all heads, naive", dict(share_weights=True, exit_loss="all-layers", head_impl="naive")),
    ("shared + all heads, checkpoint", dict(share_weights=True, exit_loss="all-layers",
                                            head_impl="checkpoint")),
    ("shared + all heads, fused", dict(share_weights=True, exit_loss="all-layers", head_impl="fused")),
    ("shared + early exit (4-test, sample), fused", dict(share_weights=True, early_exit=True,
                                                         exit_mode="sample", exit_loss="4-test",
                                                         head_impl="fused")),
    ("shared + all heads, naive, exit_token_frac=0.25", dict(share_weights=True, exit_loss="all-layers",
                                                           head_impl="naive", exit_token_frac=0.25)),
    ("shared + all heads, naive, exit_layer_frac=0.25", dict(share_weights=True, exit_loss="all-layers",
                                                           head_impl="naive", exit_layer_frac=0.25)),
]
VALIDATION_SHAPES = [   # small enough for 2 CPU cores, activations >> parameters
    dict(n_layer=2, n_head=2, n_embd=64, vocab_size=512, B=8, T=256),
    dict(n_layer=3, n_head=4, n_embd=128, vocab_size=256, B=4, T=256),
    dict(n_layer=2, n_head=2, n_embd=64, vocab_size=2048, B=4, T=512),
]


def model_config(shape, overrides):
    from model import GPTConfig
    return GPTConfig(block_size=shape["T"], vocab_size=shape["vocab_size"], n_layer=shape["n_layer"],
                     n_head=shape["n_head"], n_embd=shape["n_embd"], dropout=0.0, bias=True,
                     **overrides)


def param_counts(cfg):
    """{total, block_matmul, largest} parameter counts of the model, built on the meta device
    (no memory): total unique parameters, matmul (Linear) parameters of the stored blocks, the
    largest single tensor."""
    return _param_counts(tuple(sorted(dataclasses.asdict(cfg).items())))


@functools.lru_cache(maxsize=None)
def _param_counts(fields):
    import torch
    import torch.nn as nn
    from model import GPT
    from model import GPTConfig
    with torch.device("meta"):
        m = GPT(GPTConfig(**dict(fields)))
    ps = list(m.parameters())
    lin = sum(p.numel() for mod in m.transformer.h.modules() if isinstance(mod, nn.Linear)
              for p in mod.parameters())
    return {"total": sum(p.numel() for p in ps), "block_matmul": lin,
            "largest": max(p.numel() for p in ps)}


def fused_tiles(N, V, device):
    import heads
    return heads.default_chunk_sizes(N, V, device)


def head_terms(impl, N, C, V, a, device):
    """(saved, forward transient, backward transient) bytes of one head on N tokens."""
    f, cast = F32, a != F32
    small = 36 * N                                     # per-token outputs, top-2 indices, lse
    NV, NC, VC = N * V, N * C, V * C
    if impl == "naive":
        return a * NC + f * NV + small, f * NV, 2 * f * NV + f * VC
    if impl == "checkpoint":
        return f * NC + small, 2 * f * NV, 3 * f * NV + f * VC
    if impl != "fused":
        raise ValueError(f"memory model: unknown head_impl {impl!r}")
    rows, cols = fused_tiles(N, V, device)
    tile = min(rows, N) * min(cols, V)
    several = N > rows or V > cols
    casts = (a * NC + a * VC) if cast else 0
    fwd = casts + (a * tile if cast else 0) + f * tile * (2 if several else 1)
    # backward keeps the previous tile's z (and its cast g) while the next is computed
    tile_bwd = ((2 * f + 2 * a) if cast else 2 * f) * tile if several else ((f + a) if cast else f) * tile
    onehot = ((a + 2 * f) if cast else 2 * f) * NC + (f + (a if cast else 0)) * tile
    bwd = f * NC + f * VC + casts + max(tile_bwd, onehot)
    return f * NC + small, fwd, bwd


def estimate(shape, overrides, dtype="bf16", device="cuda"):
    """Predicted peak bytes of one training step and its parts. shape: n_layer, n_head, n_embd,
    vocab_size, B, T; overrides: GPTConfig fields (pre-ln blocks only); dtype bf16 | fp32 (the
    autocast dtype); device cuda (fused AdamW) | cpu (single-tensor AdamW)."""
    cfg = model_config(shape, overrides)
    if cfg.block_type != "pre-ln":
        raise ValueError(f"memory model: only pre-ln blocks are accounted, got {cfg.block_type!r}")
    a = {"bf16": 2, "fp32": 4}[dtype]
    f, cast = F32, a != F32
    L, C, V, nh = cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.n_head
    B, T = shape["B"], shape["T"]
    N, BTC = B * T, B * T * C
    pc = param_counts(cfg)
    P = pc["total"]
    n_blocks = 1 if cfg.share_weights else L
    layer = (2 * f + 14 * a) * BTC + 2 * 2 * f * N + f * nh * N
    weight_casts = a * pc["block_matmul"] if cast else 0
    n_heads = cfg.n_head_evals()     # full-width heads: cheap exits run fewer tokens / layers
    h_saved, h_fwd, h_bwd = head_terms(cfg.head_impl, N, C, V, a, device)
    head_cast = a * V * C if (cast and cfg.head_impl != "fused") else 0   # autocast's W copy
    heads_saved = n_heads * (h_saved + 2 * f * N) + f * BTC + head_cast
    acts = L * layer + weight_casts
    saved = acts + heads_saved
    block_bwd = (f + 9 * a) * BTC + f * pc["block_matmul"] * (1 if cfg.share_weights else 1)
    phases = {
        "forward": saved + h_fwd,
        "backward (head)": saved + h_bwd,
        "backward (last block)": saved - h_saved + block_bwd + f * V * C,
        "optimizer": f * P + (2 * f * pc["largest"] if device == "cpu" else 0),
    }
    phase = max(phases, key=phases.get)
    static = 3 * f * P
    return {"params": f * P, "adamw": 2 * f * P, "grads": f * P, "activations": acts,
            "head_buffers": heads_saved, "transient": phases[phase] - saved if phase != "optimizer" else 0,
            "phase": phase, "phases": phases, "peak": static + phases[phase],
            "n_params": P, "n_blocks": n_blocks}


def max_batch(shape, overrides, budget=BUDGET_80GB, dtype="bf16", limit=4096):
    """Largest B (power-of-two steps refined by bisection) whose predicted peak fits budget; 0 if none."""
    fits = lambda B: estimate(dict(shape, B=B), overrides, dtype)["peak"] <= budget   # noqa: E731
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


# ----------------------------------------------------------------------------------------------
# measurement on CPU

def live_peak(fn):
    """Run fn(); return (peak, final) bytes of torch CPU allocations made during it, from the
    allocation/free events the CPU allocator reports to the profiler (profile_memory=True)."""
    from torch.profiler import ProfilerActivity, profile
    from torch._C._profiler import _EventType
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        ev = stack.pop()
        if ev.tag == _EventType.Allocation:
            events.append((ev.start_time_ns, ev.extra_fields.alloc_size))
        stack.extend(ev.children)
    cur = peak = 0
    for _, size in sorted(events):
        cur += size
        peak = max(peak, cur)
    return peak, cur


def measure(shape, overrides, dtype="bf16", seed=0):
    """Measured peak bytes of one steady-state CPU training step (static part included): build,
    one warm-up step (AdamW moments exist), zero_grad(set_to_none), then the profiled step."""
    import torch
    from model import GPT
    torch.manual_seed(seed)
    cfg = model_config(shape, overrides)
    model = GPT(cfg)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, cfg.vocab_size, (shape["B"], shape["T"] + 1), generator=g)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            _, loss = model(x, y, return_logits=False)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    static = sum(p.numel() * p.element_size() for p in model.parameters())
    static += sum(t.numel() * t.element_size() for st in opt.state.values()
                  for t in st.values() if torch.is_tensor(t) and t.dim() > 0)
    peak, _ = live_peak(step)
    return static + peak


def validate(shapes=VALIDATION_SHAPES, cases=CASES, dtype="bf16"):
    """[(shape, label, measured, predicted, predicted / measured)] on CPU."""
    rows = []
    for shape in shapes:
        for label, ov in cases:
            got = measure(shape, ov, dtype)
            pred = estimate(shape, ov, dtype, device="cpu")["peak"]
            rows.append((shape, label, got, pred, pred / got))
    return rows


# ----------------------------------------------------------------------------------------------
# report

def gib(x):
    return f"{x / GIB:,.2f}"


def table(shape=GPT2_124M, cases=CASES, dtype="bf16", budget=BUDGET_80GB):
    """Markdown table of the CUDA prediction for every case at shape, with the largest B that fits."""
    B = shape["B"]
    lines = [f"Predicted peak GPU memory of one training step, GPT-2 124M shape (L={shape['n_layer']}, "
             f"C={shape['n_embd']}, V={shape['vocab_size']}), B={B}, T={shape['T']}, {dtype} "
             f"autocast, fp32 weights, fused AdamW (GiB; `python bench.py --memory`). "
             f"Fits 80 GB: peak <= {budget / GIB:.0f} GiB.",
             "",
             "| case | params | grads (within the phases) | AdamW | activations | head buffers | transient (phase) "
             "| **peak** | fits 80 GB at B=%d | largest B that fits |" % B,
             "|---|---:|---:|---:|---:|---:|---|---:|---|---:|"]
    for label, ov in cases:
        e = estimate(shape, ov, dtype)
        lines.append(f"| {label} | {gib(e['params'])} | {gib(e['grads'])} | {gib(e['adamw'])} | "
                     f"{gib(e['activations'])} | {gib(e['head_buffers'])} | "
                     f"{gib(e['transient'])} ({e['phase']}) | **{gib(e['peak'])}** | "
                     f"{'yes' if e['peak'] <= budget else 'no'} | {max_batch(shape, ov, budget, dtype)} |")
    return "\n".join(lines)


def validation_table(rows):
    lines = ["| shape (L, nh, C, V, B, T) | case | measured MiB | model MiB | model / measured |",
             "|---|---|---:|---:|---:|"]
    for shape, label, got, pred, r in rows:
        s = ", ".join(str(shape[k]) for k in ("n_layer", "n_head", "n_embd", "vocab_size", "B", "T"))
        lines.append(f"| {s} | {label} | {got / 2**20:,.1f} | {pred / 2**20:,.1f} | {r:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Predicted peak memory of one training step "
                                 "(bench.py --memory)")
    ap.add_argument("--validate", action="store_true",
                    help="also measure the small validation shapes on CPU (bf16 autocast)")
    ap.add_argument("--B", type=int, default=GPT2_124M["B"], help="micro batch (default 64)")
    ap.add_argument("--T", type=int, default=GPT2_124M["T"], help="sequence length (default 1024)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"),
                    help="with --validate: write memory-model-<date>.md here")
    args = ap.parse_args(argv)
    if args.B < 1 or args.T < 1:
        print("error: --B and --T must be >= 1", file=sys.stderr)
        return 2
    text = table(dict(GPT2_124M, B=args.B, T=args.T))
    print(text)
    if args.validate:
        import datetime
        import bench
        import fineweb
        rows = validate()
        cpu = bench.cpu_info()
        worst = max(abs(r[4] - 1) for r in rows)
        val = (f"Validation on CPU ({cpu['cpu']}, load average {cpu['loadavg']}), bf16 autocast; "
               f"measured = peak live torch CPU allocations of one steady-state step (profiler "
               f"allocation events):\n\n{validation_table(rows)}\n\n"
               f"worst |model / measured - 1| = {worst:.3f} (git {bench.git_version()})")
        print()
        print(val)
        path = os.path.join(args.out, f"memory-model-{datetime.date.today().isoformat()}.md")
        os.makedirs(args.out, exist_ok=True)
        fineweb.write_text_atomic(path, f"# Memory model\n\n`python bench.py --memory --validate`\n\n"
                                  f"{text}\n\n{val}\n")
        print(f"wrote {os.path.relpath(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
