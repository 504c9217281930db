"""Early-exit quality / compute trade-off of a checkpoint, one row per confidence threshold.

    python eval_exit.py --ckpt log/<run>/ckpt_XXXXXX.pt --data data/<dir> \
        --thresholds 0.5,0.7,0.9,1.01 [--batches N] [--decode-tokens N]

For each threshold (exit rule "threshold": a token exits at the first layer whose confidence
is >= threshold; > 1 never exits):
- val loss: mean cross-entropy of each token's exit-layer logits on the val split,
- average exit depth (1-based; n_layer = full depth) and its share of n_layer,
- FLOPs saved (forward, per token; see `forward_flops`) versus running every layer with its
  head, and versus a plain model (all blocks, one head) — the latter can be negative,
- decode wall clock (bench/decode_bench.py's interleaved measurement): full depth and every
  threshold run in turn for --decode-rounds rounds (greedy, batch 1, --decode-tokens tokens);
  tok/s median and min..max, speedup = ratio of medians to full depth, decode exit depth.
Writes the markdown table to log/<run>/exit_eval.md (next to the checkpoint) and the
val-loss-vs-depth Pareto plot to img/<run>_pareto.png.
"""
import argparse
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F


class EvalError(ValueError):
    """Bad input: reported as one `error:` line."""


def parse_thresholds(text):
    try:
        ths = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise EvalError(f"--thresholds must be comma-separated numbers, got {text!r}") from None
    if not ths or any(not math.isfinite(t) or t < 0 for t in ths):
        raise EvalError(f"--thresholds must be finite numbers >= 0, got {text!r}")
    return ths


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, help="checkpoint log/<run>/ckpt_XXXXXX.pt")
    p.add_argument("--data", required=True, help="data directory with meta.json (fineweb.py)")
    p.add_argument("--thresholds", default="0.5,0.7,0.9,1.01",
                   help="comma-separated exit thresholds")
    p.add_argument("--batches", type=int, default=8, help="val batches per threshold")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=None,
                   help="tokens per row (default: the run's T, capped at block_size)")
    p.add_argument("--decode-tokens", type=int, default=64,
                   help="new tokens generated per threshold for tokens/s (0 = skip)")
    p.add_argument("--decode-rounds", type=int, default=5,
                   help="interleaved timing rounds (full depth and every threshold in turn)")
    p.add_argument("--out", default=None, help="markdown output (default log/<run>/exit_eval.md)")
    p.add_argument("--img-dir", default="img", help="where <run>_pareto.png goes")
    p.add_argument("--device", default="auto")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# data


def load_val_tokens(data_dir, n_tokens):
    """First n_tokens of the val split (concatenated val shards) as an int64 numpy array."""
    import fineweb
    meta = fineweb.read_manifest(data_dir)
    parts, have = [], 0
    for path in fineweb.shard_paths(meta, "val"):
        arr = fineweb.load_tokens(path)
        parts.append(np.asarray(arr[: n_tokens - have], dtype=np.int64))
        have += len(parts[-1])
        if have >= n_tokens:
            break
    return (np.concatenate(parts) if parts else np.zeros(0, np.int64)), meta


def val_batches(tokens, B, T, n_batches):
    """Consecutive non-overlapping (x, y) int64 (B, T) batches; as many as fit (<= n_batches)."""
    n = min(n_batches, (len(tokens) - 1) // (B * T))
    out = []
    for i in range(n):
        buf = torch.from_numpy(tokens[i * B * T: (i + 1) * B * T + 1])
        out.append((buf[:-1].view(B, T), buf[1:].view(B, T)))
    return out


# ---------------------------------------------------------------------------------------------
# model-side helpers


def set_exit(model, threshold):
    """Threshold rule at `threshold`; None = early exit off (plain last-layer logits).
    Exited tokens' state is always propagated (exit_propagate, CALM): that is what makes the
    skipped layers free at inference, and what the FLOPs column assumes."""
    cfg = model.config
    if threshold is None:
        cfg.early_exit = False
    else:
        cfg.early_exit = True
        cfg.exit_mode = "threshold"
        cfg.exit_threshold = float(threshold)
        if hasattr(cfg, "exit_propagate"):
            cfg.exit_propagate = True


@torch.no_grad()
def evaluate(model, batches, threshold, device):
    """Val loss of exit-layer logits, exit distribution (L,) and mean exit depth."""
    set_exit(model, threshold)
    L = model.config.n_layer
    tot_loss, esd = 0.0, torch.zeros(L, dtype=torch.float64)
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits, _, stats = model(x, y, return_stats=True)
        tot_loss += F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).item()
        if threshold is None:
            esd[-1] += 1.0
        else:
            esd += stats["earlystopdict"].double().cpu()
    n = len(batches)
    esd /= n
    depth = float((esd * torch.arange(1, L + 1, dtype=torch.float64)).sum())
    return {"val_loss": tot_loss / n, "earlystopdict": esd.tolist(), "exit_depth": depth}


def layer_costs(model, T):
    """Forward FLOPs per token of one block application, one head, one layer's K/V projection.

    block = 2 * (matmul weights of the block) + 4 * n_attn * C * T  (attention scores and
            values at context T; the forward third of model.flops_per_token's terms)
    head  = 2 * C * V            (ln_f and softmax not counted)
    kv    = n_attn * 2 * 2 * C^2 (key + value projections of every attention of one layer)
    """
    cfg = model.config
    blk = model.block(0)
    w = sum(m.weight.numel() for m in blk.modules() if isinstance(m, torch.nn.Linear))
    n_attn = len(blk.attentions())
    C = cfg.n_embd
    return 2 * w + 4 * n_attn * C * T, 2 * C * cfg.vocab_size, n_attn * 4 * C * C


def forward_flops(esd, share_weights, block, head, kv):
    """Forward FLOPs per token for an exit distribution esd (L,) (esd[l] = share exiting at
    layer l + 1). A token exiting at layer l costs l blocks + l heads, plus the keys/values the
    deeper layers need for later tokens (CALM state propagation): one kv with shared weights
    (computed once, reused at every deeper layer), n_layer - l kvs without.
    Returns (with_exit, full depth with every head = L (block + head), plain = L block + head).
    """
    L = len(esd)
    cost = 0.0
    for l, share in enumerate(esd, start=1):
        skipped = L - l
        prop = 0.0 if skipped == 0 else (kv if share_weights else kv * skipped)
        cost += share * (l * (block + head) + prop)
    return cost, L * (block + head), L * block + head


def decode_timings(model, prompt, n_new, thresholds, rounds):
    """Interleaved greedy decode timings (bench/decode_bench.py): {None (full depth) or
    threshold: {"median", "min", "max" tok/s, "speedup" (ratio of medians), "depth"}}."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench"))
    import decode_bench
    set_exit(model, None)
    cases = {"full": {}}
    cases.update({f"exit@{t!r}": {"exit_threshold": float(t)} for t in thresholds})
    res = decode_bench.summarize(decode_bench.measure_interleaved(model, prompt, n_new, cases,
                                                                  rounds), model.config.n_layer)
    out = {None: res["full"]}
    out.update({t: res[f"exit@{t!r}"] for t in thresholds})
    return out


# ---------------------------------------------------------------------------------------------
# report


def fmt_num(x, spec):
    return "n/a" if x is None else format(x, spec)


def format_table(rows, ref, L):
    """Markdown table, one row per threshold."""
    lines = ["| threshold | val loss | Δ loss vs full | avg exit depth | depth / n_layer "
             "| FLOPs saved | FLOPs saved vs no-exit model | decode tok/s (median) "
             "| tok/s min..max | decode speedup (median ratio) | decode exit depth |",
             "|" + "---|" * 11]
    for r in rows:
        t = r.get("timing")
        lines.append("| {} | {:.4f} | {:+.2f} % | {:.3f} | {:.3f} | {:.1f} % | {:.1f} % "
                     "| {} | {} | {} | {} |".format(
                         format(r["threshold"], "g"), r["val_loss"],
                         100 * (r["val_loss"] / ref["val_loss"] - 1), r["exit_depth"],
                         r["exit_depth"] / L, 100 * r["flops_saved"], 100 * r["flops_saved_plain"],
                         "n/a" if t is None else f"{t['median']:.1f}",
                         "n/a" if t is None else f"{t['min']:.1f}..{t['max']:.1f}",
                         "n/a" if t is None else f"{t['speedup']:.2f}x",
                         "n/a" if t is None else f"{t['depth']:.2f}"))
    return "\n".join(lines)


def pareto_front(points):
    """Indices of non-dominated (depth, loss) points (lower is better in both), by depth."""
    idx = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in idx:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(rows, ref, L, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pts = [(r["exit_depth"], r["val_loss"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="C0", zorder=3, label="threshold")
    labels = {}                                   # thresholds landing on the same point
    for r, p in zip(rows, pts):                   # threshold (measured decode speedup)
        t = r.get("timing")
        name = format(r["threshold"], "g") + ("" if t is None else f" ({t['speedup']:.2f}x)")
        labels.setdefault((round(p[0], 6), round(p[1], 6)), []).append(name)
    for (x, y), names in labels.items():
        ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    front = pareto_front(pts)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], color="C0", lw=1)
    ax.scatter([L], [ref["val_loss"]], marker="*", s=120, color="C3", zorder=4,
               label="full depth (no exit)")
    ax.set_xlabel("average exit depth (layers)")
    ax.set_ylabel("val loss of exit-layer logits")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------


def run(args):
    """Evaluate; returns (rows, ref, markdown). Raises EvalError / fineweb.DataError on bad input."""
    thresholds = parse_thresholds(args.thresholds)
    if args.batches < 1 or args.batch_size < 1 or args.decode_tokens < 0 or args.decode_rounds < 1:
        raise EvalError("--batches, --batch-size and --decode-rounds must be >= 1, "
                        "--decode-tokens >= 0")
    if not os.path.isfile(args.ckpt):
        raise EvalError(f"checkpoint not found: {args.ckpt}")
    from model import GPT
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        model = GPT.from_checkpoint(args.ckpt)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise EvalError(f"cannot load checkpoint {args.ckpt}: {type(e).__name__}: {first}") from None
    model.to(device).eval()
    cfg = model.config
    if cfg.confidence == "target-prob":
        raise EvalError("checkpoint uses confidence 'target-prob', which needs targets; "
                        "early exit at inference is undefined for it")
    T = args.seq_len
    if T is None:
        ckpt_T = torch.load(args.ckpt, map_location="cpu", weights_only=True,
                            mmap=True).get("train_config", {}).get("T")
        T = int(ckpt_T) if ckpt_T else cfg.block_size
    T = min(T, cfg.block_size)
    B = args.batch_size
    tokens, meta = load_val_tokens(args.data, args.batches * B * T + 1)
    if int(meta["vocab_size"]) > cfg.vocab_size:
        raise EvalError(f"data vocab_size {meta['vocab_size']} > model vocab_size {cfg.vocab_size}: "
                        "wrong --data for this checkpoint?")
    batches = val_batches(tokens, B, T, args.batches)
    if not batches:
        raise EvalError(f"val split of {args.data} has {len(tokens)} tokens; need at least "
                        f"{B * T + 1} (lower --batch-size or --seq-len)")
    prompt = torch.from_numpy(tokens[: min(8, len(tokens) - 1)]).view(1, -1).to(device)
    n_new = min(args.decode_tokens, cfg.block_size - prompt.shape[1])
    block, head, kv = layer_costs(model, T)
    L = cfg.n_layer
    saved_cfg = (cfg.early_exit, cfg.exit_mode, cfg.exit_threshold,
                 getattr(cfg, "exit_propagate", True))

    ref = evaluate(model, batches, None, device)
    rows = []
    for th in thresholds:
        r = evaluate(model, batches, th, device)
        flops, full_heads, plain = forward_flops(r["earlystopdict"], cfg.share_weights,
                                                 block, head, kv)
        r.update(threshold=th, flops_per_token=flops, flops_saved=1 - flops / full_heads,
                 flops_saved_plain=1 - flops / plain)
        rows.append(r)
    timings = decode_timings(model, prompt, n_new, thresholds, args.decode_rounds) if n_new else {}
    ref["timing"] = timings.get(None)
    for r in rows:
        r["timing"] = timings.get(r["threshold"])
    cfg.early_exit, cfg.exit_mode, cfg.exit_threshold, cfg.exit_propagate = saved_cfg

    run_name = os.path.basename(os.path.dirname(os.path.abspath(args.ckpt)))
    n_tok = len(batches) * B * T
    md = "\n".join([
        f"# Early-exit evaluation: {run_name}",
        "",
        f"checkpoint `{args.ckpt}`, data `{args.data}` (val, {n_tok} tokens, B={B}, T={T}), "
        f"n_layer={L}, share_weights={cfg.share_weights}, confidence={cfg.confidence}, "
        f"exit_loss={cfg.exit_loss} (trained with exit_propagate={saved_cfg[3]}), "
        f"device={device}. Exit rule: threshold on the confidence, exited tokens' state "
        "propagated to deeper layers (CALM).",
        "",
        f"Full depth (early exit off): val loss {ref['val_loss']:.4f}, decode "
        f"{fmt_num(ref['timing'] and ref['timing']['median'], '.1f')} tok/s (median of "
        f"{args.decode_rounds} rounds interleaved with the thresholds', {n_new} greedy tokens, "
        "batch 1).",
        "",
        format_table(rows, ref, L),
        "",
        "FLOPs: forward per token; a token exiting at layer l costs l blocks + l heads (+ the "
        "keys/values deeper layers need for later tokens); 'saved' is against all n_layer blocks "
        "with their heads, 'vs no-exit model' against n_layer blocks + one head.",
        "",
    ])
    return rows, ref, md, run_name


def main(argv=None):
    args = parse_args(argv)
    try:
        import fineweb
        data_errors = (EvalError, fineweb.DataError)
    except ImportError:
        data_errors = (EvalError,)
    try:
        rows, ref, md, run_name = run(args)
    except data_errors as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), "exit_eval.md")
    img = os.path.join(args.img_dir, f"{run_name}_pareto.png")
    plot_pareto(rows, ref, len(ref["earlystopdict"]), img,
                f"{run_name}: val loss vs exit depth")
    fineweb.write_text_atomic(out, md)
    print(md)
    print(f"wrote {out} and {img}")


if __name__ == "__main__":
    main()
