"""Early-exit quality / compute trade-off of a checkpoint, one row per confidence threshold.

    python eval_exit.py --ckpt log/<run>/ckpt_XXXXXX.pt --data data/<dir> \
        --thresholds 0.5,0.7,0.9,1.01 [--batches N] [--decode-tokens N]

For each threshold (exit rule "threshold": a token exits at the first layer whose confidence
is >= threshold; > 1 never exits):
- val loss: mean cross-entropy of each token's exit-layer logits on the val split,
- average exit depth (1-based; n_layer = full depth) and its share of n_layer,
- FLOPs saved (forward, per token; see `forward_flops`) versus running every layer with its
  head, and versus a plain model (all blocks, one head) — the latter can be negative,
- decode tokens/s of `model.generate(..., exit_threshold=thr)` and its ratio to full depth.
Writes the markdown table to log/<run>/exit_eval.md (next to the checkpoint) and the
val-loss-vs-depth Pareto plot to img/<run>_pareto.png.

    python eval_exit.py ... --measures all [--tolerance 0.01]      # compare exit measures

compares confidence measures (exits.CONFIDENCES) on the one checkpoint: each measure's
thresholds are quantiles of its own per-layer confidences (a 0/1 measure sweeps its knob, e.g.
argmax_stable_k), so the curves span comparable ranges. The val batches are split in two: the
first half calibrates, the second reports. Calibrated threshold (a plain held-out check, no
statistical bound): the shallowest setting whose calibration loss is within --tolerance of
full depth's; the table says whether its loss on the report half holds. One table, one plot
(img/<run>_measures.png) with a Pareto curve per measure; log/<run>/exit_measures.md.

    python eval_exit.py ... --depths 1,2,...,12 [--depths-vs OTHER_CKPT]     # test-time depth

val loss (early exit off) with the blocks applied d times for each depth d (shared weights:
any d; otherwise d <= n_layer), beside a second checkpoint's with --depths-vs; table
log/<run>/exit_depths.md and plot img/<run>_depths.png.
"""
import contextlib
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import checkpoint
import cli


class EvalError(ValueError):
    """Bad input: reported as one `error:` line."""


def parse_thresholds(text):
    """'0.5,0.9' -> [0.5, 0.9]; EvalError unless every item is a finite number >= 0."""
    try:
        ths = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise EvalError(f"--thresholds must be comma-separated numbers, got {text!r}") from None
    if not ths or any(not math.isfinite(t) or t < 0 for t in ths):
        raise EvalError(f"--thresholds must be finite numbers >= 0, got {text!r}")
    return ths


def parse_depths(text):
    """'1,2,4' -> [1, 2, 4]; EvalError unless every item is an int >= 1."""
    try:
        ds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        ds = []
    if not ds or min(ds) < 1:
        raise EvalError(f"--depths must be comma-separated ints >= 1, got {text!r}")
    return ds


def parse_measures(text):
    """'entropy,kl-prev' | 'all' -> names; EvalError listing the valid ones on an unknown name.
    target-prob needs targets at inference and is never compared."""
    import exits
    valid = sorted(n for n in exits.CONFIDENCES if n != "target-prob")
    names = valid if text == "all" else [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in valid]
    if bad or not names:
        raise EvalError(f"--measures: unknown measure {(bad or [text])[0]!r}; valid: all, "
                        f"{', '.join(valid)}")
    return names


def parse_args(argv=None):
    """Parsed arguments; bad values and paths exit 2 with one error line, before any work."""
    p = cli.Parser(prog="eval_exit.py", description=cli.doc_head(__doc__))
    p.add_argument("--ckpt", required=True, help="checkpoint log/<run>/ckpt_XXXXXX.pt")
    p.add_argument("--data", required=True, help="data directory with meta.json (fineweb.py)")
    p.add_argument("--thresholds", default="0.5,0.7,0.9,1.01",
                   help="comma-separated exit thresholds (>= 0; > 1 never exits)")
    p.add_argument("--batches", type=cli.int_arg(1, 1 << 20), default=8, help="val batches per threshold")
    p.add_argument("--batch-size", type=cli.int_arg(1, 1 << 16), default=4, help="rows per val batch")
    p.add_argument("--seq-len", type=cli.int_arg(1), default=None,
                   help="tokens per row (None: the run's T, capped at block_size)")
    p.add_argument("--decode-tokens", type=cli.int_arg(0), default=64,
                   help="new tokens generated per threshold for tokens/s (0 = skip)")
    p.add_argument("--decode-rounds", type=cli.int_arg(1, 1000), default=3,
                   help="interleaved timing rounds over all thresholds; tok/s is the median")
    p.add_argument("--out", default=None, help="markdown output (None: log/<run>/exit_eval.md)")
    p.add_argument("--img-dir", default="img", help="where <run>_pareto.png goes")
    p.add_argument("--img", default=None, help="Pareto plot path (None: <img-dir>/<run>_pareto.png)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--measures", default=None,
                   help="compare these confidence measures (comma-separated, or all) with "
                        "calibrated thresholds instead of the threshold table")
    p.add_argument("--tolerance", type=cli.float_arg(0), default=0.01,
                   help="--measures: tolerated relative val-loss increase for the calibrated "
                        "threshold")
    p.add_argument("--depths", default=None,
                   help="comma-separated depths (block applications) for val loss per depth "
                        "instead of the threshold table")
    p.add_argument("--depths-vs", action="append", default=None,
                   help="--depths: another checkpoint evaluated at the same depths beside it "
                        "(repeatable)")
    p.add_argument("--summary", action="store_true",
                   help="print the short table and a suggested threshold instead of the full one")
    args = p.parse_args(argv)
    try:
        args.threshold_list = parse_thresholds(args.thresholds)
        args.measure_list = None if args.measures is None else parse_measures(args.measures)
        args.depth_list = None if args.depths is None else parse_depths(args.depths)
        if args.measure_list and args.depth_list:
            raise EvalError("--measures and --depths are separate evaluations; give one")
        if args.depths_vs is not None:
            if args.depth_list is None:
                raise EvalError("--depths-vs needs --depths")
            for path in args.depths_vs:
                cli.check_input_file(path, "--depths-vs")
        cli.check_input_file(args.ckpt, "--ckpt")
        if not os.path.isdir(args.data):
            raise EvalError(f"--data {args.data}: data directory does not exist")
        name = ("exit_measures.md" if args.measure_list else
                "exit_depths.md" if args.depth_list else "exit_eval.md")
        args.out = args.out or os.path.join(os.path.dirname(args.ckpt), name)
        cli.check_output(args.out, "--out")
        cli.check_output(args.img_dir, "--img-dir", is_dir=True)
        if args.img:
            cli.check_output(args.img, "--img")
        args.device = str(cli.check_device(args.device))
    except ValueError as e:
        cli.fail(e)
    return args


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
        cfg.exit_propagate = True


@torch.no_grad()
def evaluate(model, batches, threshold, device):
    """Val loss of exit-layer logits, exit distribution (L,) and mean exit depth."""
    set_exit(model, threshold)
    L = model.config.n_layer
    tot_loss, esd = 0.0, torch.zeros(L, dtype=torch.float64)
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        out = model(x, y, return_stats=True)
        logits, stats = out.logits, out.stats
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


@torch.no_grad()
def decode(model, prompt, n_new, threshold):
    """Greedy KV-cache decode (batch 1) -> (tokens/s, average exit depth of the new tokens);
    threshold None = early exit off (full depth, one head)."""
    set_exit(model, threshold)
    kw = {} if threshold is None else {"exit_threshold": float(threshold)}
    if prompt.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.generate(prompt, n_new, temperature=0, **kw)
    if prompt.is_cuda:
        torch.cuda.synchronize()
    tok_s = n_new / (time.perf_counter() - t0)
    depth = getattr(model, "last_generate_stats", {}).get("avg_exit_depth")
    if threshold is None:
        depth = float(model.config.n_layer)
    return tok_s, depth


def decode_speeds(model, prompt, n_new, thresholds, rounds):
    """decode() of every threshold (None = full depth), interleaved over rounds (A B C A B C
    ...) after one warm-up pass, so steady background load hits all alike -> [(median tok/s,
    exit depth)] in the order of `thresholds`."""
    for th in thresholds:                                           # warm-up
        decode(model, prompt, 2, th)
    runs = [[] for _ in thresholds]
    for _ in range(rounds):
        for i, th in enumerate(thresholds):
            runs[i].append(decode(model, prompt, n_new, th))
    return [(float(np.median([r[0] for r in rs])), rs[-1][1]) for rs in runs]


# ---------------------------------------------------------------------------------------------
# report


def fmt_num(x, spec):
    return "n/a" if x is None else format(x, spec)


def format_table(rows, ref, L):
    """Markdown table, one row per threshold."""
    lines = ["| threshold | val loss | Δ loss vs full | avg exit depth | depth / n_layer "
             "| FLOPs saved | FLOPs saved vs no-exit model | decode tok/s | decode speedup "
             "| decode exit depth |", "|" + "---|" * 10]
    for r in rows:
        speedup = ("n/a" if r["tok_s"] is None or not ref["tok_s"]
                   else f"{r['tok_s'] / ref['tok_s']:.2f}x")
        lines.append("| {} | {:.4f} | {:+.2f} % | {:.3f} | {:.3f} | {:.1f} % | {:.1f} % "
                     "| {} | {} | {} |".format(
                         format(r["threshold"], "g"), r["val_loss"],
                         100 * (r["val_loss"] / ref["val_loss"] - 1), r["exit_depth"],
                         r["exit_depth"] / L, 100 * r["flops_saved"], 100 * r["flops_saved_plain"],
                         fmt_num(r["tok_s"], ".1f"), speedup, fmt_num(r["decode_depth"], ".2f")))
    return "\n".join(lines)


def format_summary(rows, ref, L):
    """The short table for a screen: threshold -> val CE, its change, average exit depth, decode
    speedup; first row full depth (early exit off). Plain text, aligned columns."""
    def speedup(r):
        return "n/a" if r["tok_s"] is None or not ref["tok_s"] else f"{r['tok_s'] / ref['tok_s']:.2f}x"
    out = [f"{'threshold':>9}  {'val CE':>6}  {'vs full':>7}  {'avg exit depth':>14}  "
           f"{'decode speedup':>14}",
           f"{'off':>9}  {ref['val_loss']:6.3f}  {'':>7}  {L:>9.2f} / {L:<2d}  {speedup(ref):>14}"]
    for r in rows:
        out.append(f"{format(r['threshold'], 'g'):>9}  {r['val_loss']:6.3f}  "
                   f"{100 * (r['val_loss'] / ref['val_loss'] - 1):+6.1f}%  "
                   f"{r['exit_depth']:>9.2f} / {L:<2d}  {speedup(r):>14}")
    return "\n".join(out)


def suggest_threshold(rows, ref, tol=0.02):
    """The row with the shallowest average exit whose val CE is within tol of full depth's
    (None when no threshold is)."""
    ok = [r for r in rows if r["val_loss"] <= (1 + tol) * ref["val_loss"]]
    return min(ok, key=lambda r: r["exit_depth"]) if ok else None


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
    plt = _pyplot()
    pts = [(r["exit_depth"], r["val_loss"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="C0", zorder=3, label="threshold")
    labels = {}                                   # thresholds landing on the same point
    for r, p in zip(rows, pts):                   # threshold (measured decode speedup)
        name = format(r["threshold"], "g")
        if r.get("tok_s") and ref.get("tok_s"):
            name += f" ({r['tok_s'] / ref['tok_s']:.2f}x)"
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
    _finish(fig, ax, path, title)


# ---------------------------------------------------------------------------------------------


def load(args, ckpt, exit_at_inference=True):
    """(model on args.device in eval mode, checkpoint dict, val batches, B, T, val tokens).
    Raises EvalError / fineweb.DataError on bad input."""
    device = args.device
    try:
        model, ck = checkpoint.load_model(ckpt)
    except checkpoint.CheckpointError as e:
        raise EvalError(str(e)) from None
    model.to(device).eval()
    cfg = model.config
    if exit_at_inference and cfg.confidence == "target-prob":
        raise EvalError("checkpoint uses confidence 'target-prob', which needs targets; "
                        "early exit at inference is undefined for it")
    T = args.seq_len
    if T is None:
        T = int(ck["train_config"].get("T") or cfg.block_size)
    T = min(T, cfg.block_size)
    B = args.batch_size
    tokens, meta = load_val_tokens(args.data, args.batches * B * T + 1)
    if int(meta["vocab_size"]) > cfg.vocab_size:
        raise EvalError(f"data vocab_size {meta['vocab_size']} > model vocab_size {cfg.vocab_size}: "
                        "wrong --data for this checkpoint?")
    import fineweb
    why = fineweb.vocabulary_mismatch(meta, ck.get("tokenizer"))
    if why:
        raise EvalError(f"--data {args.data} has {why}: checkpoint {ckpt} was trained on "
                        f"another vocabulary")
    batches = val_batches(tokens, B, T, args.batches)
    if not batches:
        raise EvalError(f"val split of {args.data} has {len(tokens)} tokens; need at least "
                        f"{B * T + 1} (lower --batch-size or --seq-len)")
    return model, ck, batches, B, T, tokens


def run(args):
    """Evaluate; returns (rows, ref, markdown). Raises EvalError / fineweb.DataError on bad input."""
    thresholds = args.threshold_list
    device = args.device
    model, ck, batches, B, T, tokens = load(args, args.ckpt)
    cfg = model.config
    prompt = torch.from_numpy(tokens[: min(8, len(tokens) - 1)]).view(1, -1).to(device)
    n_new = min(args.decode_tokens, cfg.block_size - prompt.shape[1])
    block, head, kv = layer_costs(model, T)
    L = cfg.n_layer
    saved_cfg = (cfg.early_exit, cfg.exit_mode, cfg.exit_threshold,
                 cfg.exit_propagate)

    ref = evaluate(model, batches, None, device)
    rows = []
    for th in thresholds:
        r = evaluate(model, batches, th, device)
        flops, full_heads, plain = forward_flops(r["earlystopdict"], cfg.share_weights,
                                                 block, head, kv)
        r.update(threshold=th, flops_per_token=flops, flops_saved=1 - flops / full_heads,
                 flops_saved_plain=1 - flops / plain)
        rows.append(r)
    speeds = (decode_speeds(model, prompt, n_new, [None] + thresholds, args.decode_rounds)
              if n_new else [(None, None)] * (1 + len(rows)))
    for r, (tok_s, depth) in zip([ref] + rows, speeds):
        r["tok_s"], r["decode_depth"] = tok_s, depth
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
        f"{fmt_num(ref['tok_s'], '.1f')} tok/s ({n_new} greedy tokens, batch 1; tok/s: median "
        f"of {args.decode_rounds} rounds interleaved over the thresholds).",
        "",
        format_table(rows, ref, L),
        "",
        "FLOPs: forward per token; a token exiting at layer l costs l blocks + l heads (+ the "
        "keys/values deeper layers need for later tokens); 'saved' is against all n_layer blocks "
        "with their heads, 'vs no-exit model' against n_layer blocks + one head.",
        "",
    ])
    return rows, ref, md, run_name


# ---------------------------------------------------------------------------------------------
# measures compared, calibrated thresholds

QUANTILES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)


@contextlib.contextmanager
def overridden(cfg, **fields):
    """Set config fields for the block, restore them after."""
    old = {k: getattr(cfg, k) for k in fields}
    for k, v in fields.items():
        setattr(cfg, k, v)
    try:
        yield cfg
    finally:
        for k, v in old.items():
            setattr(cfg, k, v)


@torch.no_grad()
def layer_confidences(model, batches, device):
    """Confidences (config.confidence) of layers 1..L-1 of every token, no exit -> 1-D fp32."""
    with overridden(model.config, early_exit=False):
        out = [torch.cat([o.confidence.flatten().float().cpu() for o in
                          model._trunk(x.to(device), heads_on=True)["layers"][:-1]])
               for x, _ in batches]
    return torch.cat(out)


def measure_settings(model, calib, name, device):
    """[(label, threshold, config overrides)] swept for measure `name`: its knob over
    1..n_layer-1 at threshold 0.5 (a 0/1 measure), else thresholds at QUANTILES of its
    confidences on the calibration batches, plus 1.01 (never exits)."""
    import exits
    meas, L = exits.CONFIDENCES[name], model.config.n_layer
    if meas.knob:
        return [(f"{meas.knob}={k}", 0.5, {meas.knob: k}) for k in range(1, L)]
    with overridden(model.config, confidence=name):
        c = layer_confidences(model, calib, device)
    ths = sorted({round(float(t), 6) for t in torch.quantile(c, torch.tensor(QUANTILES))})
    return [(format(t, "g"), t, {}) for t in ths + [1.01]]


def calibrated(rows, ref_cal, tol):
    """The row with the shallowest calibration depth whose calibration loss is within tol of
    full depth's (a plain held-out check: `holds` says if the report half agrees), or None."""
    ok = [r for r in rows if r["cal_loss"] <= (1 + tol) * ref_cal]
    return min(ok, key=lambda r: (r["cal_depth"], r["cal_loss"])) if ok else None


def run_measures(args):
    """--measures: every measure's settings on the calibration and report halves of the val
    batches -> (rows, refs, markdown, run name)."""
    device = args.device
    model, ck, batches, B, T, _ = load(args, args.ckpt)
    if len(batches) < 2:
        raise EvalError("--measures splits the val batches into calibration and report "
                        "halves: needs --batches >= 2")
    cfg = model.config
    if any(n == "learned" for n in args.measure_list) and not hasattr(model, "exit_classifier"):
        if args.measures != "all":
            raise EvalError(f"measure 'learned' needs a checkpoint trained with "
                            f"--confidence=learned (its exit classifier); {args.ckpt} has none")
        args.measure_list = [n for n in args.measure_list if n != "learned"]
    half = len(batches) // 2
    cal, rep = batches[:half], batches[half:]
    ref = {"cal": evaluate(model, cal, None, device)["val_loss"],
           "rep": evaluate(model, rep, None, device)["val_loss"], "n_layer": cfg.n_layer}
    rows = []
    keep = (cfg.early_exit, cfg.exit_mode, cfg.exit_threshold, cfg.exit_propagate)
    for name in args.measure_list:
        for label, thr, extra in measure_settings(model, cal, name, device):
            with overridden(cfg, confidence=name, **extra):
                c, r = evaluate(model, cal, thr, device), evaluate(model, rep, thr, device)
            rows.append(dict(measure=name, setting=label, threshold=thr,
                             cal_loss=c["val_loss"], cal_depth=c["exit_depth"],
                             val_loss=r["val_loss"], exit_depth=r["exit_depth"]))
    cfg.early_exit, cfg.exit_mode, cfg.exit_threshold, cfg.exit_propagate = keep
    run_name = os.path.basename(os.path.dirname(os.path.abspath(args.ckpt)))
    md = format_measures(rows, ref, args, run_name, cfg, len(cal) * B * T, len(rep) * B * T)
    return rows, ref, md, run_name


def best_within(rows, ref, tol):
    """{measure: shallowest row whose report loss is within tol of full depth's}."""
    out = {}
    for r in rows:
        if r["val_loss"] <= (1 + tol) * ref and (r["measure"] not in out or
                                                 r["exit_depth"] < out[r["measure"]]["exit_depth"]):
            out[r["measure"]] = r
    return out


def format_measures(rows, ref, args, run_name, cfg, n_cal, n_rep):
    tol, L = args.tolerance, cfg.n_layer
    pct = lambda loss, base: 100 * (loss / base - 1)      # noqa: E731
    best = best_within(rows, ref["rep"], tol)
    lines = [
        f"# Exit measures compared: {run_name}", "",
        f"checkpoint `{args.ckpt}`, data `{args.data}`: the val batches split into a "
        f"calibration half ({n_cal} tokens) and a report half ({n_rep} tokens); n_layer={L}, "
        f"share_weights={cfg.share_weights}, exit_loss={cfg.exit_loss}. Full depth: val loss "
        f"{ref['cal']:.4f} (calibration), {ref['rep']:.4f} (report). Exit rule: threshold, "
        "exited state propagated (CALM). Thresholds: quantiles of each measure's own "
        "confidences on the calibration half; argmax-stable sweeps k.", "",
        f"Calibrated setting (tolerance {100 * tol:g} %): the shallowest setting whose "
        "calibration-half loss is within the tolerance of full depth's; `holds` = its "
        "report-half loss is too (a plain held-out check). Best at the tolerance: the "
        "shallowest setting on the report half itself (an oracle).", "",
        "| measure | calibrated setting | Δ loss (calibration) | Δ loss (report) | holds "
        "| avg depth (report) | best at tolerance: setting, avg depth |",
        "|" + "---|" * 7]
    for name in dict.fromkeys(r["measure"] for r in rows):
        c = calibrated([r for r in rows if r["measure"] == name], ref["cal"], tol)
        b = best.get(name)
        bcol = "none" if b is None else f"{b['setting']}, {b['exit_depth']:.3f}"
        if c is None:
            lines.append(f"| {name} | none | | | | {L:.3f} | {bcol} |")
            continue
        holds = "yes" if c["val_loss"] <= (1 + tol) * ref["rep"] else "no"
        lines.append(f"| {name} | {c['setting']} | {pct(c['cal_loss'], ref['cal']):+.2f} % "
                     f"| {pct(c['val_loss'], ref['rep']):+.2f} % | {holds} "
                     f"| {c['exit_depth']:.3f} | {bcol} |")
    if best:
        w = min(best.values(), key=lambda r: r["exit_depth"])
        lines += ["", f"Lowest average depth at <= {100 * tol:g} % loss (report half): "
                      f"**{w['measure']}** ({w['setting']}: depth {w['exit_depth']:.3f} of {L}, "
                      f"{pct(w['val_loss'], ref['rep']):+.2f} %)."]
    lines += ["", "Every setting (report half):", "",
              "| measure | setting | val loss | Δ loss | avg depth |", "|---|---|---|---|---|"]
    lines += [f"| {r['measure']} | {r['setting']} | {r['val_loss']:.4f} "
              f"| {pct(r['val_loss'], ref['rep']):+.2f} % | {r['exit_depth']:.3f} |" for r in rows]
    return "\n".join(lines + [""])


def plot_measures(rows, ref, L, tol, path, title):
    """Report-half val loss vs average exit depth: one Pareto curve per measure."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, name in enumerate(dict.fromkeys(r["measure"] for r in rows)):
        pts = [(r["exit_depth"], r["val_loss"]) for r in rows if r["measure"] == name]
        front = pareto_front(pts)
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=10, color=f"C{i}", alpha=0.4)
        ax.plot([pts[j][0] for j in front], [pts[j][1] for j in front], "-o", ms=3,
                color=f"C{i}", label=name)
    ax.scatter([L], [ref], marker="*", s=120, color="k", zorder=4, label="full depth")
    ax.axhline((1 + tol) * ref, color="gray", ls="--", lw=1, label=f"+{100 * tol:g} % loss")
    ax.set_ylim(top=min(ax.get_ylim()[1], ref * 1.15))
    ax.set_xlabel("average exit depth (layers)")
    ax.set_ylabel("val loss of exit-layer logits (report half)")
    _finish(fig, ax, path, title)


# ---------------------------------------------------------------------------------------------
# test-time depth


def run_depths(args):
    """--depths: val loss (no exit) at every depth, for --ckpt and each --depths-vs ->
    (runs [(run name, n_layer, depth_sampling, [loss per depth])], markdown, run name)."""
    runs = []
    for ckpt in [args.ckpt] + (args.depths_vs or []):
        model, ck, batches, B, T, _ = load(args, ckpt, exit_at_inference=False)
        losses = []
        for d in args.depth_list:
            try:
                with model.at_depth(d):
                    losses.append(evaluate(model, batches, None, args.device)["val_loss"])
            except ValueError as e:
                raise EvalError(f"{ckpt}: {e}") from None
        runs.append((os.path.basename(os.path.dirname(os.path.abspath(ckpt))),
                     model.config.n_layer, model.config.depth_sampling, losses))
    n_tok = len(batches) * B * T
    lines = [f"# Val loss per depth: {', '.join(r[0] for r in runs)}", "",
             f"data `{args.data}` (val, {n_tok} tokens, B={B}, T={T}); early exit off, the "
             "blocks applied `depth` times (a shared block any number of times). Δ: against "
             "the run's own loss at its training depth n_layer.", "",
             "| depth | " + " | ".join(f"{r[0]} (n_layer {r[1]}, depth_sampling {r[2]}) | Δ"
                                       for r in runs) + " |",
             "|---|" + "---|---|" * len(runs)]
    for i, d in enumerate(args.depth_list):
        cells = []
        for _, L, _, losses in runs:
            base = losses[args.depth_list.index(L)] if L in args.depth_list else None
            delta = "" if base is None else f"{100 * (losses[i] / base - 1):+.2f} %"
            cells.append(f"{losses[i]:.4f} | {delta}")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return runs, "\n".join(lines + [""]), runs[0][0]


def plot_depths(runs, depths, path, title):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, L, sampling, losses) in enumerate(runs):
        ax.plot(depths, losses, "-o", ms=3, color=f"C{i}",
                label=f"{name} (n_layer {L}, depth_sampling {sampling})")
        ax.axvline(L, color=f"C{i}", ls=":", lw=1)
    ax.set_xlabel("depth (block applications at test time)")
    ax.set_ylabel("val loss")
    _finish(fig, ax, path, title)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _finish(fig, ax, path, title):
    """Title, grid, legend; save atomically to path; close."""
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    finally:
        fig.clf()
        _pyplot().close(fig)


def evaluate_and_write(args):
    """run(args), then the markdown table (args.out) and the Pareto plot (--img, default
    <img-dir>/<run>_pareto.png) -> (rows, ref, md, out path, img path).
    Raises EvalError / fineweb.DataError on bad input, before writing anything."""
    import fineweb
    if args.measure_list:
        rows, ref, md, run_name = run_measures(args)
        img = args.img or os.path.join(args.img_dir, f"{run_name}_measures.png")
        plot_measures(rows, ref["rep"], ref["n_layer"], args.tolerance, img,
                      f"{run_name}: exit measures")
        fineweb.write_text_atomic(args.out, md)
        return rows, ref, md, args.out, img
    if args.depth_list:
        runs, md, run_name = run_depths(args)
        img = args.img or os.path.join(args.img_dir, f"{run_name}_depths.png")
        plot_depths(runs, args.depth_list, img, "val loss vs test-time depth")
        fineweb.write_text_atomic(args.out, md)
        return runs, None, md, args.out, img
    rows, ref, md, run_name = run(args)
    img = args.img or os.path.join(args.img_dir, f"{run_name}_pareto.png")
    plot_pareto(rows, ref, len(ref["earlystopdict"]), img,
                f"{run_name}: val loss vs exit depth")
    fineweb.write_text_atomic(args.out, md)
    return rows, ref, md, args.out, img


def main(argv=None):
    args = parse_args(argv)
    import fineweb
    try:
        rows, ref, md, out, img = evaluate_and_write(args)
    except (EvalError, fineweb.DataError) as e:
        cli.fail(e)
    except MemoryError:
        cli.fail(f"out of memory for --batch-size {args.batch_size} x --seq-len; lower them")
    except OSError as e:
        cli.fail(f"{e.strerror or e}: {e.filename or ''}".rstrip(": "))
    if args.summary and (args.measure_list or args.depth_list):
        print(md.split("\n\nEvery setting")[0])
    elif args.summary:
        L = len(ref["earlystopdict"])
        print(format_summary(rows, ref, L))
        best = suggest_threshold(rows, ref)
        if best is not None:
            print(f"suggested: --exit_threshold {best['threshold']:g} (average exit depth "
                  f"{best['exit_depth']:.2f} of {L} at {100 * (best['val_loss'] / ref['val_loss'] - 1):+.1f}% "
                  "val CE: the shallowest within 2 % of full depth)")
    else:
        print(md)
    print(f"wrote {out} and {img}")


if __name__ == "__main__":
    main()
