"""Decode-speed benchmark: full depth vs early exit vs self-speculative, interleaved rounds.

    python bench.py --decode [--ckpt log/decode_bench_cpu/ckpt_XXXXXX.pt] [--rounds 5]
    python bench/decode_bench.py ...                        # the same

The checkpoint (default: the newest log/decode_bench_cpu/ckpt_*.pt) comes from
`python train_gpt2.py config/decode_bench_cpu.py` (CPU minutes). For every batch size (default
1 and 8) the cases run interleaved with full depth between any two, full A full B full C full,
the order of A B C rotated by one every round, for --rounds rounds, each run generating
--new-tokens greedy tokens after --prompt-len tokens of distinct val-split prompts:

  full         plain full-depth KV-cached decoding (the reference of every ratio)
  full (Block modules)  the same through the model's Block modules instead of the decode kernel
               (decode._SharedPreLN, when the model has one): what the kernel gains
  exit@t       per-token early exit at threshold t (1.01 > every max-prob: can never fire, so
               the heads are skipped (exits.never_exits); 1: every layer's head and check
               run, firing only on a probability of exactly 1)
  spec d×k     self-speculative: layers 1..d draft k tokens, the full model verifies
  depth d      full-depth decoding with the blocks applied d times (generate(depth=d)): a
               model d layers deep, the best an exit at depth d can do (embedding, final head
               and sampling are paid per token whatever the depth)

Every run times two phases (decode.generate's stats): the first token (the prompt's encoding)
and the decode phase (the --new-tokens - 1 steps after it, one per token: what early exit and
speculation act on, and what n_layer / exit depth predicts). Per case: decode tok/s median and
min..max over runs, the ratio of medians to full at the same batch size, speedup = the median
over rounds of the paired ratio of decode tok/s (the case's over the mean of the two full-depth
runs around it: on a machine whose speed drifts with other tenants' load, the estimate that
drift does not bias) with its min..max, decode depth (average exit layer of the decode-phase
tokens), ideal = n_layer / decode depth, speedup / ideal; the end-to-end speedup (whole call,
prompt included; paired the same way) in wall clock and in CPU time, the median time to the
first token; for exit@t the val loss of exit-layer logits (eval_exit.evaluate) and its change
vs full depth; for spec the acceptance rate, tokens per verification and whether the tokens
equal full depth's (they must). For a threshold that can fire but never did at a batch size
(it pays its check at every layer for nothing) the check's cost is also measured without the
drift between whole runs: --step-pairs full-depth and early-exit decode steps alternated at one
cache position (step_pairs), the median of their time ratios and its middle half.
Writes bench/results/decode-<device>-<date>.md / .json.
"""
import argparse
import datetime
import glob
import json
import os
import shlex
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

DEFAULT_CKPT_GLOB = os.path.join("log", "decode_bench_cpu", "ckpt_*.pt")
TRAIN_CMD = "python train_gpt2.py config/decode_bench_cpu.py"


class BenchError(ValueError):
    """Bad input: reported as one `error:` line."""


def parse_list(text, kind, name):
    try:
        vals = [kind(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise BenchError(f"{name} must be a comma-separated list, got {text!r}") from None
    if not vals:
        raise BenchError(f"{name} is empty")
    return vals


def parse_spec(text):
    """'2x4,3x6' -> [(2, 4), (3, 6)] (draft layers x draft tokens); '' -> []."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            d, k = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise BenchError(f"--spec entries are DxK (draft layers x tokens), got {part!r}") from None
        out.append((d, k))
    return out


def parse_args(argv=None):
    import cli
    ap = cli.Parser(prog="bench.py --decode", description=cli.doc_head(__doc__))
    ap.add_argument("--ckpt", default=None, help=f"checkpoint (None: the newest {DEFAULT_CKPT_GLOB})")
    ap.add_argument("--data", default=os.path.join("data", "shakespeare_char"),
                    help="data directory (fineweb.py) for prompts and val loss")
    ap.add_argument("--thresholds", default="1.01,1,0.6,0.4,0.3,0.25,0.2",
                    help="early-exit thresholds (1.01 can never fire: heads skipped; 1: checked "
                         "at every layer)")
    ap.add_argument("--spec", default="1x4,1x8,1x16,2x6", help="self-speculative DxK cases")
    ap.add_argument("--depths", default="2,3", help="truncated full-depth cases: the blocks "
                    "applied d times (generate(depth=d)), the best an exit at depth d can do "
                    "('' = none)")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--rounds", type=cli.int_arg(1, 1000), default=9)
    ap.add_argument("--step-pairs", type=cli.int_arg(0, 10 ** 6), default=2000,
                    help="for each threshold that can fire but never did: full-depth and "
                    "early-exit decode steps alternated this many times (0: off)")
    ap.add_argument("--new-tokens", type=cli.int_arg(2), default=64,
                    help="tokens per run: the first (prompt) plus a decode phase of n - 1")
    ap.add_argument("--prompt-len", type=cli.int_arg(1), default=32)
    ap.add_argument("--val-batches", type=cli.int_arg(1), default=8,
                    help="val batches (8 x 128) for the loss")
    ap.add_argument("--threads", type=cli.int_arg(0, 4096), default=1,
                    help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = ap.parse_args(argv)
    try:
        args.threshold_list = parse_list(args.thresholds, float, "--thresholds")
        args.spec_list = parse_spec(args.spec)
        args.depth_list = parse_list(args.depths, int, "--depths") if args.depths.strip() else []
        if any(d < 1 for d in args.depth_list):
            raise BenchError(f"--depths must be >= 1, got {args.depths!r}")
        args.batch_list = parse_list(args.batch_sizes, int, "--batch-sizes")
        if any(t != t or t < 0 for t in args.threshold_list):
            raise BenchError(f"--thresholds must be numbers >= 0, got {args.thresholds!r}")
        if any(b < 1 for b in args.batch_list):
            raise BenchError(f"--batch-sizes must be >= 1, got {args.batch_sizes!r}")
        args.device = str(cli.check_device(args.device))
        cli.check_output(args.out, "--out", is_dir=True)
    except (BenchError, cli.UsageError) as e:
        cli.fail(e)
    return args


# ----------------------------------------------------------------------------------------------
# measurement


def generate(model, prompts, n_new, kw):
    """Greedy model.generate(prompts, n_new, **kw); kw "blocks": True decodes with the Block
    modules (decode._Blocks) whatever kernel_for would pick: the kernel's own reference."""
    import decode
    kw = dict(kw)
    if not kw.pop("blocks", False):
        return model.generate(prompts, n_new, temperature=0, **kw)
    pick = decode.kernel_for
    decode.kernel_for = decode._Blocks
    try:
        return model.generate(prompts, n_new, temperature=0, **kw)
    finally:
        decode.kernel_for = pick


# what every run measures: decode-phase tok/s (the steps after the first token, one per
# token), whole-call tok/s (prompt included) in wall clock and in this thread's CPU time
METRICS = ("dec_tok_s", "tok_s", "cpu_tok_s")


def time_generate(model, prompts, n_new, kw):
    """One timed greedy generate -> (tokens (B, T+n), {metric: value} for METRICS and
    "first_ms", stats). dec_tok_s is generate's decode_tokens_per_s; CPU time is this thread's
    (time.thread_time): with one torch thread it is the compute the decode used, whatever else
    shares the CPU (meaningless on CUDA)."""
    if prompts.is_cuda:
        import torch
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.thread_time()
    out = generate(model, prompts, n_new, kw)
    dt, dc = time.perf_counter() - t0, time.thread_time() - c0   # generate syncs CUDA
    st = dict(model.last_generate_stats)
    n = prompts.size(0) * n_new
    return out, {"dec_tok_s": st["decode_tokens_per_s"], "tok_s": n / dt,
                 "cpu_tok_s": n / max(dc, 1e-9), "first_ms": 1e3 * st["first_token_s"]}, st


def rotation(names, r):
    """Round r's order of the cases: names rotated by r, so that over the rounds every case
    runs in every slot (after a different case) and no case owns the round's start."""
    k = r % len(names)
    return names[k:] + names[:k]


def measure_interleaved(model, prompts, n_new, cases, rounds, ref="full"):
    """cases: {name: generate keywords}, one of them `ref`. After one untimed warm-up each,
    every round runs ref, case, ref, case, ..., ref over the other cases in `rotation` order:
    each case sits between two ref runs, and its paired ratio is its value over their mean (a
    drift of the machine's speed that is linear over the three runs cancels exactly), for each
    of METRICS. -> {name: {"runs": {metric: [every run], "first_ms": [...]}, "paired": {metric:
    [per round]}, "depth" (decode phase), "acceptance", "tokens_per_verify", "out": tokens of
    the last run}}."""
    res = {name: {"runs": {m: [] for m in METRICS + ("first_ms",)},
                  "paired": {m: [] for m in METRICS}} for name in cases}
    for name, kw in cases.items():                             # warm-up
        generate(model, prompts, min(4, n_new), kw)

    def run(name):
        out, got, st = time_generate(model, prompts, n_new, cases[name])
        r = res[name]
        for m, v in got.items():
            r["runs"][m].append(v)
        r.update(depth=st["decode_exit_depth"], acceptance=st.get("acceptance_rate"),
                 tokens_per_verify=st.get("tokens_per_verify"), out=out)
        return got

    others = [n for n in cases if n != ref]
    for i in range(rounds):
        prev = run(ref)
        for name in rotation(others, i):
            got, nxt = run(name), run(ref)
            for m in METRICS:
                res[name]["paired"][m].append(got[m] / ((prev[m] + nxt[m]) / 2))
            prev = nxt
        for m in METRICS:
            res[ref]["paired"][m].append(1.0)
    return res


def step_pairs(model, prompts, threshold, pairs):
    """The check's cost without the run-to-run drift: one full-depth decode step and one
    early-exit step at `threshold` (decode._step, what generate runs per token) alternated
    `pairs` times, each pair's order swapped, at one cache position after prompts (B, T) (their
    last token, decoded at position T again and again: both steps write the same K/V there;
    T < block_size). -> the per-pair
    ratios (full-depth step time / early-exit step time), or None when the threshold can
    never fire (decoding then is the full-depth path) or fires at that step (the two steps
    would not do the same work)."""
    import torch
    import decode
    import exits
    L, (B, T) = model.config.n_layer, prompts.shape
    sync = torch.cuda.synchronize if prompts.is_cuda else (lambda: None)
    with torch.inference_mode():
        measure = decode._exit_check(model, exits.EXIT_RULES["threshold"], threshold,
                                     prompts.device)
        if measure is None:
            return None
        head = decode._head_fn(model)
        layers = decode.kernel_for(model, head)
        cache = decode.DecodeCache(model, B, prompts.device, next(model.parameters()).dtype)
        decode._step(model, cache, prompts, 0, head, layers, None)
        args = [(model, cache, prompts[:, -1:], T, head, layers, m) for m in (None, measure)]
        if decode._step(*args[1])[1] != float(L):
            return None
        times = ([], [])
        for i in range(pairs):
            for j in ((0, 1) if i % 2 else (1, 0)):
                sync()
                t0 = time.perf_counter()
                decode._step(*args[j])
                sync()
                times[j].append(time.perf_counter() - t0)
    return [a / b for a, b in zip(*times)]


def summarize(res, n_layer, ref="full"):
    """Adds, from the decode-phase tok/s: median, min, max, ratio_of_medians (median over
    `ref`'s), speedup (median of the paired ratios) with its min..max (speedup_min,
    speedup_max), ideal (n_layer / decode depth) and of_ideal (speedup / ideal); e2e_speedup
    and cpu_speedup (the median paired ratio of whole-call tok/s, wall clock and CPU time) and
    first_ms (median time to the first token)."""
    med = statistics.median
    for r in res.values():
        runs, paired = r["runs"], r["paired"]
        r["median"], r["min"], r["max"] = (med(runs["dec_tok_s"]), min(runs["dec_tok_s"]),
                                           max(runs["dec_tok_s"]))
        r["speedup"] = med(paired["dec_tok_s"])
        r["speedup_min"], r["speedup_max"] = min(paired["dec_tok_s"]), max(paired["dec_tok_s"])
        r["e2e_speedup"], r["cpu_speedup"] = med(paired["tok_s"]), med(paired["cpu_tok_s"])
        r["first_ms"] = med(runs["first_ms"])
        r["ideal"] = n_layer / r["depth"]
        r["of_ideal"] = r["speedup"] / r["ideal"]
    for r in res.values():
        r["ratio_of_medians"] = r["median"] / res[ref]["median"]
    return res


# ----------------------------------------------------------------------------------------------
# report


def fmt(v, spec):
    return "–" if v is None or v != v else format(v, spec)


def render_table(res, losses, ref_loss):
    lines = ["| case | decode depth | decode tok/s median | min..max | ratio of medians "
             "| speedup (decode, paired median) | paired min..max | ideal L/depth "
             "| speedup / ideal | end-to-end speedup | end-to-end CPU-time speedup "
             "| first token ms | val loss | Δ loss | acceptance | tokens / verify "
             "| = full depth |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in res.items():
        loss = losses.get(name)
        d_loss = None if loss is None else 100 * (loss / ref_loss - 1)
        lines.append(
            f"| {name} | {r['depth']:.2f} | {r['median']:,.1f} | {r['min']:,.1f}..{r['max']:,.1f} "
            f"| {r['ratio_of_medians']:.2f}x | **{r['speedup']:.2f}x** "
            f"| {r['speedup_min']:.2f}..{r['speedup_max']:.2f} "
            f"| {r['ideal']:.2f} | {r['of_ideal']:.2f} | {r['e2e_speedup']:.2f}x "
            f"| {r['cpu_speedup']:.2f}x | {r['first_ms']:.1f} | {fmt(loss, '.4f')} "
            f"| {'–' if d_loss is None else f'{d_loss:+.2f} %'} | {fmt(r['acceptance'], '.2f')} "
            f"| {fmt(r['tokens_per_verify'], '.2f')} | {r.get('identical', '–')} |")
    return "\n".join(lines)


def newest_ckpt(pattern):
    paths = sorted(glob.glob(pattern))
    return paths[-1] if paths else None


def run(args):
    import torch
    import checkpoint
    import decode
    import eval_exit

    from bench import cpu_info
    load_start = cpu_info()["loadavg"]
    thresholds, specs, batch_sizes = args.threshold_list, args.spec_list, args.batch_list
    ckpt = args.ckpt or newest_ckpt(os.path.join(ROOT, DEFAULT_CKPT_GLOB))
    if ckpt is None or not os.path.isfile(ckpt):
        raise BenchError(f"checkpoint not found: {ckpt or DEFAULT_CKPT_GLOB}; train it with "
                         f"`{TRAIN_CMD}`")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    T = 128                                         # val batches (8, T) for the loss
    n_val = max(args.val_batches * 8 * T, max(batch_sizes) * args.prompt_len) + 1
    tokens, _ = eval_exit.load_val_tokens(args.data, n_val)
    try:
        model, _ = checkpoint.load_model(ckpt)
    except checkpoint.CheckpointError as e:
        raise BenchError(str(e)) from None
    model.to(device).eval()
    cfg = model.config
    L = cfg.n_layer
    for d, k in specs:
        if not 1 <= d < L or k < 1:
            raise BenchError(f"--spec {d}x{k}: need 1 <= D < n_layer ({L}) and K >= 1")
    if args.prompt_len + args.new_tokens > cfg.block_size:
        raise BenchError(f"--prompt-len + --new-tokens = {args.prompt_len + args.new_tokens} > "
                         f"block_size {cfg.block_size}")
    batches = eval_exit.val_batches(tokens, 8, min(T, cfg.block_size), args.val_batches)
    if not batches:
        raise BenchError(f"val split of {args.data} is too short ({len(tokens)} tokens)")

    with torch.no_grad():
        ref_loss = eval_exit.evaluate(model, batches, None, device)["val_loss"]
        losses, fwd_depth = {}, {}
        for t in thresholds:
            ev = eval_exit.evaluate(model, batches, t, device)
            losses[f"exit@{t:g}"], fwd_depth[f"exit@{t:g}"] = ev["val_loss"], ev["exit_depth"]
    eval_exit.set_exit(model, None)
    losses["full"] = ref_loss
    for d, k in specs:
        losses[f"spec {d}x{k}"] = ref_loss                    # lossless: full model's tokens

    cases = {"full": {}}
    if decode.kernel_for(model, decode._head_fn(model)).__class__ is not decode._Blocks:
        cases["full (Block modules)"] = {"blocks": True}
    cases.update({f"exit@{t:g}": {"exit_threshold": t} for t in thresholds})
    cases.update({f"spec {d}x{k}": {"draft_layers": d, "draft_tokens": k} for d, k in specs})
    cases.update({f"depth {d}": {"depth": d} for d in args.depth_list})
    per_batch = {}
    for B in batch_sizes:
        stride = len(tokens) // B
        prompts = torch.stack([torch.from_numpy(tokens[i * stride: i * stride + args.prompt_len])
                               for i in range(B)]).to(device)
        print(f"batch {B}: {len(cases)} cases x {args.rounds} rounds ...", flush=True)
        res = summarize(measure_interleaved(model, prompts, args.new_tokens, cases, args.rounds), L)
        for name, r in res.items():
            t = cases[name].get("exit_threshold")
            ratios = (step_pairs(model, prompts, t, args.step_pairs)
                      if t is not None and r["depth"] == L and args.step_pairs else None)
            if ratios:
                q = statistics.quantiles(ratios, n=4)
                r["step_paired"] = dict(median=statistics.median(ratios), q25=q[0], q75=q[2],
                                        pairs=len(ratios))
        full_out = res["full"]["out"]
        for name, r in res.items():
            if name.startswith(("spec", "full (")):
                r["identical"] = "yes" if torch.equal(r["out"], full_out) else "NO"
            del r["out"]
        per_batch[B] = res
    return dict(ckpt=ckpt, device=device, n_layer=L, config=cfg, ref_loss=ref_loss,
                losses=losses, fwd_depth=fwd_depth, per_batch=per_batch, thresholds=thresholds,
                loadavg_start=load_start, loadavg_end=cpu_info()["loadavg"])


def within_1pct(report):
    """The exit@t case of lowest forward exit depth whose val loss is within 1 % of full."""
    ok = [(report["fwd_depth"][n], n) for n, loss in report["losses"].items()
          if n.startswith("exit@") and loss <= 1.01 * report["ref_loss"]]
    return min(ok)[1] if ok else None


def out_of_order(res):
    """Early-exit cases whose speedup is out of order with their decode depth beyond the spread:
    pairs (deeper, shallower) where the deeper case's slowest round ratio beats the shallower
    case's fastest one. [] = speedup monotone in depth within the per-round spread."""
    ex = [(r["depth"], n, r) for n, r in res.items() if n.startswith("exit@")]
    return [(a, b) for da, a, ra in ex for db, b, rb in ex
            if da > db and ra["speedup_min"] > rb["speedup_max"]]


def depth_matched(res, depth):
    """The speedup of truncated full-depth decoding ("depth d" cases) at a fractional depth:
    time per token interpolated linearly between the nearest two depths -> speedup, or None."""
    pts = sorted((r["depth"], 1.0 / r["speedup"]) for n, r in res.items()
                 if n.startswith("depth "))
    for (d1, t1), (d2, t2) in zip(pts, pts[1:]):
        if d1 <= depth <= d2:
            return 1.0 / (t1 + (depth - d1) / (d2 - d1) * (t2 - t1))
    return None


def acceptance_lines(report):
    """Issue 17's decode-speed checks, read off the tables (one line each)."""
    lines, pick = [], within_1pct(report)
    for B, res in report["per_batch"].items():
        never = [n for n in res if n.startswith("exit@") and res[n]["depth"] == report["n_layer"]]
        lines += [f"- batch {B}, thresholds that never fired: " + ", ".join(
            f"{n} {res[n]['speedup']:.2f}x ({res[n]['ratio_of_medians']:.2f}x)" for n in never)
            + " of full depth (target >= 0.95x)"]
        steps = [n for n in never if "step_paired" in res[n]]
        if steps:
            sp = [res[n]["step_paired"] for n in steps]
            lines += [f"- batch {B}, the same, decode steps alternated with full depth's "
                      f"{sp[0]['pairs']} times in one process (median ratio, middle half): "
                      + ", ".join(f"{n} {p['median']:.3f}x ({p['q25']:.2f}..{p['q75']:.2f})"
                                  for n, p in zip(steps, sp))]
        if pick in res:
            r = res[pick]
            lines += [f"- batch {B}, {pick}: {r['speedup']:.2f}x ({r['ratio_of_medians']:.2f}x), "
                      f"{r['of_ideal']:.2f} of the ideal {r['ideal']:.2f} (targets: batch 8 >= "
                      f"1.3x, batch 1 >= 0.8 of ideal); end to end, prompt included: "
                      f"{r['e2e_speedup']:.2f}x ({r['e2e_speedup'] / r['ideal']:.2f} of the ideal)"]
            matched = depth_matched(res, r["depth"])
            if matched:
                lines += [f"- batch {B}, truncated full-depth decoding at {pick}'s depth "
                          f"{r['depth']:.2f} (interpolated): {matched:.2f}x, "
                          f"{matched / r['ideal']:.2f} of the ideal; {pick} reaches "
                          f"{r['speedup'] / matched:.2f} of it"]
        bad = out_of_order(res)
        lines += [f"- batch {B}: speedup monotone in decode depth within the spread: "
                  + ("yes" if not bad else "no, " + "; ".join(f"{a} vs {b}" for a, b in bad))]
    return lines


def render(report, args, command):
    import torch
    sys.path.insert(0, ROOT)
    from bench import cpu_info
    cfg = report["config"]
    dev = report["device"]
    name = torch.cuda.get_device_name(0) if dev == "cuda" else cpu_info()["cpu"]
    pick = within_1pct(report)
    lines = [f"# Decode benchmark — {name}, {datetime.date.today().isoformat()}", "",
             f"`{command}`  ",
             f"device: {dev} ({name}), torch {torch.__version__}, threads "
             f"{torch.get_num_threads()}, load avg (1, 5, 15 min) at the start "
             f"{report['loadavg_start']}, at the end {report['loadavg_end']}  ",
             f"checkpoint `{os.path.relpath(report['ckpt'], ROOT)}`: n_layer {cfg.n_layer}, "
             f"n_embd {cfg.n_embd}, share_weights {cfg.share_weights}, exit_loss "
             f"{cfg.exit_loss}, vocab {cfg.vocab_size}; val loss full depth "
             f"{report['ref_loss']:.4f}  ",
             f"{args.rounds} interleaved rounds (full, A, full, B, full, ..., full over the exit@… "
             f"and spec … cases, their order rotated by one each round), {args.new_tokens} greedy "
             f"tokens after {args.prompt_len}-token val prompts; tok/s counts new tokens of all "
             "rows. Decode tok/s: the tokens after the first over the time after it (the "
             "prompt's encoding and the first token are timed apart, as first token ms); "
             "end-to-end: the whole generate call. Speedup: the median over rounds of the paired "
             "ratio (tok/s over the mean of the two full-depth runs around it), wall clock unless "
             "marked CPU-time (the decoding thread's CPU time, whole call: without the time it "
             "waited for a core, still with the slowdown of caches and memory bandwidth shared "
             "with other jobs); in brackets in the checks, the ratio of medians.", ""]
    if pick:
        lines += [f"Threshold with the smallest exit depth within 1 % of full-depth val loss: "
                  f"**{pick}** (val loss {report['losses'][pick]:.4f}, forward exit depth "
                  f"{report['fwd_depth'][pick]:.2f}).", ""]
    lines += ["Checks (issue 17):", ""] + acceptance_lines(report) + [""]
    for B, res in report["per_batch"].items():
        lines += [f"## batch {B}", "", render_table(res, report["losses"], report["ref_loss"]), ""]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    command = shlex.join(["python", "bench.py", "--decode"] + list(sys.argv[1:] if argv is None
                                                                  else argv))
    try:
        import fineweb
        errors = (BenchError, fineweb.DataError)
    except ImportError:
        errors = (BenchError,)
    try:
        report = run(args)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    md = render(report, args, command)
    import fineweb
    os.makedirs(args.out, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in report["device"]).strip("-")
    base = os.path.join(args.out, f"decode-{slug}-{datetime.date.today().isoformat()}")
    js = {k: v for k, v in report.items() if k != "config"}
    js["ckpt"] = os.path.relpath(report["ckpt"], ROOT)
    js["config"] = dict(vars(report["config"]))
    js["command"] = command
    js["within_1pct"] = within_1pct(report)
    fineweb.write_text_atomic(base + ".json", json.dumps(js, indent=1, default=str) + "\n")
    fineweb.write_text_atomic(base + ".md", md + "\n")
    print(md)
    print(f"wrote {base}.md and {base}.json")


if __name__ == "__main__":
    main()
