"""Cheap exits (issue 16): training-step cost of per-layer exit heads, plain vs full vs sampled.

    python bench.py --cheap-exits                # same as: python bench/cheap_exits.py
    python bench/cheap_exits.py --device cuda --B 16 --T 1024 --n_embd 768 --n_head 12 --vocab_size 50304
    python bench/cheap_exits.py --quality-report # table + plot of the CPU quality runs

Speed: at a CPU proxy shape with GPT-2 124M's head-to-block FLOP ratio (C 256, V 16,384,
12 layers: per layer, head FLOPs / block FLOPs ~ V / (12 C) = 5.3 vs 124M's 5.5). tok/s: every
case's model in ONE process, taking one training step each in turn (A B C A B C ...), so load
changes on a shared machine hit all cases alike; per case the median and min..max over rounds
of tok/s and of its ratio to plain within the round. Peak step memory: each case in a fresh
process (bench.py's worker), over plain's. Training FLOPs/token (model.flops_per_token) at the
proxy and at GPT-2 124M (T 1024), with the FLOP-bound throughput ratio to plain at 124M.

Quality (`--quality-report`): reads the eval_exit.py tables and training logs of
config/exit_pareto_cpu.py trained with full heads and with each cheap mode (commands printed
by `--quality-commands`), writes one table and one plot with every Pareto curve.
"""
import datetime
import json
import os
import re
import shlex
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import bench  # noqa: E402  (bench.py: worker launch, device info)
import cli  # noqa: E402
import fineweb  # noqa: E402

SHARED = dict(share_weights=True, layer_heads=True, exit_loss="all-layers", head_impl="fused")
CASES = {   # name -> GPTConfig overrides; "plain" is the reference of every ratio
    "plain": dict(share_weights=False, layer_heads=False, head_impl="fused"),
    "all-heads": SHARED,
    "token-0.1": dict(SHARED, exit_token_frac=0.1),
    "token-0.0625": dict(SHARED, exit_token_frac=0.0625),
    "layer-0.1": dict(SHARED, exit_layer_frac=0.1),
    "layer-0.3+token-0.25": dict(SHARED, exit_layer_frac=0.3, exit_token_frac=0.25),
}
WHAT = {
    "plain": "plain GPT-2: final head only (fused), unshared blocks",
    "all-heads": "shared block, a full head after every layer (today)",
    "token-0.1": "exit_token_frac=0.1: early heads on 10 % of token columns",
    "token-0.0625": "exit_token_frac=0.0625",
    "layer-0.1": "exit_layer_frac=0.1: 1 of 11 early heads per micro step",
    "layer-0.3+token-0.25": "3 of 11 early heads, each on 25 % of the tokens",
}
PROXY_SHAPE = dict(n_layer=12, n_head=4, n_embd=256, vocab_size=16384, B=4, T=128)
GPT2_SHAPE = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50304, B=16, T=1024)
QUALITY_MODES = {   # run tag -> trainer flags (config/exit_pareto_cpu.py)
    "full": "", "tok0.1": "--exit_token_frac=0.1", "layer0.1": "--exit_layer_frac=0.1"}


def head_block_ratio(shape):
    """Per layer, full-vocabulary head FLOPs over block matmul FLOPs: 6CV / (6 * 12 C^2)."""
    return shape["vocab_size"] / (12 * shape["n_embd"])


def model_flops(shape, overrides):
    """Training FLOPs/token of the case's model at this shape (model.flops_per_token)."""
    from model import GPT, GPTConfig
    import torch
    cfg = GPTConfig(block_size=shape["T"], vocab_size=shape["vocab_size"],
                    n_layer=shape["n_layer"], n_head=shape["n_head"], n_embd=shape["n_embd"],
                    **overrides)
    with torch.device("meta"):
        return GPT(cfg).flops_per_token(shape["T"])


def med_range(xs, spec="{:.3f}"):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{spec.format(statistics.median(xs))} ({spec.format(min(xs))}..{spec.format(max(xs))})"


def build_case(shape, overrides, dev):
    """(model, AdamW, step()) of one case at this shape: step() = one training step."""
    import torch
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=shape["T"], vocab_size=shape["vocab_size"],
                    n_layer=shape["n_layer"], n_head=shape["n_head"], n_embd=shape["n_embd"],
                    **overrides)
    model = GPT(cfg).to(dev).train()
    opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), dev)
    g = torch.Generator().manual_seed(1234)
    data = torch.randint(0, cfg.vocab_size, (shape["B"], shape["T"] + 1), generator=g).to(dev)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()

    def step():
        opt.zero_grad(set_to_none=True)
        model(x, y, return_logits=False).loss.backward()
        opt.step()
    return model, opt, step


def interleaved_tok_per_s(shape, cases, dev, rounds, warmup):
    """{case: [tok/s of each round]}: every case's model lives in this one process and the
    cases take one training step each in turn (A B C A B C ...), so a load change on a shared
    machine hits all cases alike; the ratio to plain is taken within each round."""
    import time
    import torch
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    steps = {name: build_case(shape, CASES[name], dev)[2] for name in cases}
    for _ in range(warmup):
        for step in steps.values():
            step()
    out = {name: [] for name in cases}
    for rnd in range(rounds):
        for name, step in steps.items():
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            out[name].append(shape["B"] * shape["T"] / (time.perf_counter() - t0))
        print(f"  round {rnd + 1}: " + ", ".join(f"{n} {v[-1]:,.0f}" for n, v in out.items()),
              flush=True)
    return out


def run_speed(args):
    import torch
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    shape = dict(PROXY_SHAPE)
    for k in shape:
        if getattr(args, k) is not None:
            shape[k] = getattr(args, k)
    cases = [c for c in args.cases.split(",") if c]
    if not cases or any(c not in CASES for c in cases) or cases[0] != "plain":
        cli.fail(f"--cases must start with plain and name cases of: {', '.join(CASES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = args.dtype or ("bf16" if dev == "cuda" else "fp32")
    info = bench.device_info(dev)
    print(f"device: {dev} — {info['name']}; torch {info['torch']}; threads {info['threads']}"
          + (f"; load avg {info['loadavg']}" if "loadavg" in info else ""), flush=True)
    print(f"head/block FLOP ratio per layer (V / 12C): proxy {head_block_ratio(shape):.2f}, "
          f"GPT-2 124M {head_block_ratio(GPT2_SHAPE):.2f}", flush=True)
    print("peak step memory: each case in a fresh process (bench.py worker)", flush=True)
    mem = {}
    for name in cases:
        spec = dict(device=dev, shape=shape, overrides=CASES[name], dtype=dtype, stat="best",
                    compile=False, warmup=1, steps=1, threads=args.threads)
        r = bench.launch(name, spec, args.timeout)
        mem[name] = r
        print(f"  {name:22s} " + (f"{bench.mem_of(r, dev):7,.0f} MiB" if r["status"] == "ok"
                                  else f"{r['status']}: {r.get('error', '')}"), flush=True)
    print(f"tok/s: all cases in one process, one step each in turn, {args.rounds} rounds",
          flush=True)
    autocast = torch.autocast(dev, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}
                              .get(dtype, torch.float32), enabled=dtype != "fp32")
    with autocast:
        tps = interleaved_tok_per_s(shape, cases, dev, args.rounds, args.warmup)
    rows = []
    p124 = model_flops(GPT2_SHAPE, CASES["plain"])
    for name in cases:
        f124 = model_flops(GPT2_SHAPE, CASES[name])
        rows.append(dict(case=name, what=WHAT[name], overrides=CASES[name], tok_per_s=tps[name],
                         ratio=[a / b for a, b in zip(tps[name], tps["plain"])],
                         mem_ratio=[bench.ratio(bench.mem_of(mem[name], dev),
                                                bench.mem_of(mem["plain"], dev))],
                         flops_per_token=model_flops(shape, CASES[name]),
                         gpt2_flops_per_token=f124, gpt2_flop_bound_ratio=p124 / f124))
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": shlex.join(["python"] + args.argv), "device": dev, "device_info": info,
              "shape": shape, "dtype": dtype, "rounds": args.rounds, "warmup": args.warmup,
              "git": bench.git_version(), "end_loadavg": bench.cpu_info()["loadavg"],
              "head_block_ratio": {"proxy": head_block_ratio(shape),
                                   "gpt2_124M": head_block_ratio(GPT2_SHAPE)},
              "rows": rows, "memory_runs": mem}
    md = render_speed(report)
    base = os.path.join(args.out, f"cheap-exits-{bench.slug(dev + '-' + info['name'])}-"
                                  f"{datetime.date.today().isoformat()}")
    fineweb.write_text_atomic(base + ".json", json.dumps(report, indent=1) + "\n")
    fineweb.write_text_atomic(base + ".md", md)
    print()
    print(md)
    print(f"wrote {base}.md, {base}.json")


def fmt_mem(xs):
    return "-" if not xs or xs[0] is None else f"{xs[0]:.2f}"


def render_speed(rep):
    info, shape = rep["device_info"], rep["shape"]
    mem = "peak step memory / plain" + (" (RSS growth)" if rep["device"] == "cpu" else "")
    out = [f"# Cheap exits: training-step cost — {info['name']}, {rep['date']}", "",
           f"`{rep['command']}`  ",
           f"device: {rep['device']} ({info['name']}), torch {info['torch']}, threads "
           f"{info['threads']}" + (f", load avg at start {info['loadavg']}" if "loadavg" in info
                                   else "") + "  ",
           f"shape: n_layer {shape['n_layer']}, n_head {shape['n_head']}, n_embd {shape['n_embd']}, "
           f"V {shape['vocab_size']}, B {shape['B']} x T {shape['T']}; {rep['dtype']}; tok/s: "
           f"every case's model in one process, {rep['warmup']} warmup step(s) each, then "
           f"{rep['rounds']} rounds of one training step per case in turn (median, min..max; "
           f"ratio to plain within each round); memory: each case in a fresh process, "
           f"peak over one step; load avg at end {rep['end_loadavg']}; git {rep['git']}  ",
           f"head/block FLOP ratio per layer (V / 12C): **proxy {rep['head_block_ratio']['proxy']:.2f}**"
           f", GPT-2 124M {rep['head_block_ratio']['gpt2_124M']:.2f}", "",
           f"| case | tok/s median (min..max) | tok/s / plain (same round) | {mem} | "
           f"GFLOP/token proxy | GFLOP/token 124M | 124M FLOP-bound ratio to plain |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rep["rows"]:
        fpt = "-" if r["flops_per_token"] is None else f"{r['flops_per_token'] / 1e9:.4f}"
        out.append(f"| {r['case']} | {med_range(r['tok_per_s'], '{:,.0f}')} | "
                   f"{med_range(r['ratio'])} | {fmt_mem(r['mem_ratio'])} | {fpt} | "
                   f"{r['gpt2_flops_per_token'] / 1e9:.3f} | {r['gpt2_flop_bound_ratio']:.2f} |")
    out += ["", "Cases:"] + [f"- `{r['case']}`: {r['what']}" for r in rep["rows"]]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------
# quality: config/exit_pareto_cpu.py, full heads vs each cheap mode

def quality_commands(seeds, steps, out_dir="log/examples/cheap"):
    cmds = []
    for seed in seeds:
        for tag, flags in QUALITY_MODES.items():
            run = f"exit_pareto_cpu-{tag}-s{seed}"
            cmds.append(f"python train_gpt2.py config/exit_pareto_cpu.py --log_dir={out_dir} "
                        f"--img_dir={out_dir}/img --run_name={run} --seed={seed} "
                        f"--max_steps={steps} --eval_interval=100 {flags}".strip())
            cmds.append(f"python eval_exit.py --ckpt {out_dir}/{run}/ckpt_{steps - 1:06d}.pt "
                        f"--data data/shakespeare_char --thresholds 0.2,0.3,0.35,0.4,0.45,0.5,0.6,"
                        f"0.7,0.8,0.9,0.95,1.01 --batches 20 --decode-tokens 0 "
                        f"--out {out_dir}/{run}_eval.md --img-dir {out_dir}/img")
    return cmds


def parse_eval(path):
    """[(threshold, val loss, avg exit depth)] of an eval_exit.py markdown table."""
    rows = []
    with open(path) as f:
        for line in f:
            m = re.match(r"\|\s*([0-9.]+)\s*\|\s*([0-9.]+)\s*\|[^|]*\|\s*([0-9.]+)\s*\|", line)
            if m:
                rows.append(tuple(float(v) for v in m.groups()))
    return rows


def depth_within(rows, pct):
    """Smallest avg exit depth whose val loss is within pct % of the full-depth (last) row."""
    full = rows[-1][1]
    ok = [d for _, loss, d in rows if loss <= full * (1 + pct / 100)]
    return min(ok) if ok else float("nan")


def quality_report(args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    d = args.quality_dir
    runs = sorted(f[:-len("_eval.md")] for f in os.listdir(d) if f.endswith("_eval.md"))
    if not runs:
        cli.fail(f"no *_eval.md in {d}; run the commands of --quality-commands first")
    n_layer = 6
    table = ["| run | seed | head evals / token | final-layer val loss | Δ vs full | "
             "depth at ≤ 2 % loss | Δ depth vs full (× n_layer) | depth at ≤ 1 % |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    data = {r: parse_eval(os.path.join(d, r + "_eval.md")) for r in runs}
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in runs:
        tag, seed = re.match(r"exit_pareto_cpu-(.+)-s(\d+)$", r).groups()
        ref = data.get(f"exit_pareto_cpu-full-s{seed}")
        rows = data[r]
        final, d2, d1 = rows[-1][1], depth_within(rows, 2), depth_within(rows, 1)
        evals = _head_evals(QUALITY_MODES.get(tag, ""), n_layer)
        if ref:
            dl = f"{(final / ref[-1][1] - 1) * 100:+.2f} %"
            dd = f"{(d2 - depth_within(ref, 2)) / n_layer:+.3f}"
        else:
            dl = dd = "-"
        table.append(f"| {tag} | {seed} | {evals:.2f} of {n_layer} | {final:.4f} | {dl} | "
                     f"{d2:.3f} | {dd} | {d1:.3f} |")
        ax.plot([x[2] for x in rows], [x[1] for x in rows], marker="o", ms=3,
                label=f"{tag} (seed {seed}), final {final:.3f}")
    ax.set_xlabel("average exit depth (layers)")
    ax.set_ylabel("val loss")
    ax.set_title("exit_pareto_cpu: full heads vs cheap exits")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    os.makedirs(os.path.dirname(args.quality_plot), exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.quality_plot, dpi=120)
    md = "\n".join(["# Cheap exits: exit quality on CPU (config/exit_pareto_cpu.py)", "",
                    f"runs in `{os.path.relpath(d, ROOT)}`; plot `{os.path.relpath(args.quality_plot, ROOT)}`",
                    ""] + table) + "\n"
    fineweb.write_text_atomic(args.quality_out, md)
    print(md)
    print(f"wrote {args.quality_out}, {args.quality_plot}")


def _head_evals(flags, n_layer):
    """Full-vocabulary head evaluations per training token of a QUALITY_MODES entry."""
    from model import GPTConfig
    kw = dict(a[2:].split("=", 1) for a in flags.split())
    cfg = GPTConfig(n_layer=n_layer, share_weights=True, exit_loss="all-layers",
                    **{k: float(v) for k, v in kw.items()})
    return cfg.n_head_evals()


def parse_args(argv):
    ap = cli.Parser(prog="bench/cheap_exits.py", description=cli.doc_head(__doc__))
    ap.add_argument("--cases", default=",".join(CASES), help=f"plain first; of {','.join(CASES)}")
    ap.add_argument("--rounds", type=cli.int_arg(1), default=7,
                    help="timed rounds: one training step of every case in turn")
    ap.add_argument("--warmup", type=cli.int_arg(0), default=1,
                    help="untimed steps of every case first")
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None)
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None)
    ap.add_argument("--threads", type=cli.int_arg(0, 4096), default=0,
                    help="torch threads (0: default)")
    ap.add_argument("--timeout", type=cli.float_arg(1), default=900.0,
                    help="seconds per memory-measuring process")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    for k in PROXY_SHAPE:
        ap.add_argument(f"--{k}", type=cli.int_arg(1, 1 << 20), default=None,
                        help="override the proxy shape")
    ap.add_argument("--quality-commands", action="store_true",
                    help="print the quality runs' commands (train + eval_exit per mode and seed)")
    ap.add_argument("--quality-report", action="store_true",
                    help="table + plot from the quality runs' eval_exit.py tables")
    ap.add_argument("--seeds", default="1337", help="quality runs: comma-separated seeds")
    ap.add_argument("--quality-steps", type=cli.int_arg(1), default=600,
                    help="quality runs: max_steps")
    ap.add_argument("--quality-dir", default=os.path.join(ROOT, "log", "examples", "cheap"))
    ap.add_argument("--quality-out", default=os.path.join(ROOT, "bench", "results",
                                                          "cheap-exits-quality-cpu.md"))
    ap.add_argument("--quality-plot", default=os.path.join(ROOT, "img", "readme",
                                                           "cheap_exits_pareto.png"))
    args = ap.parse_args(argv)
    try:
        cli.check_output(args.out, "--out", is_dir=True)
        cli.check_output(args.quality_out, "--quality-out")
        cli.check_output(args.quality_plot, "--quality-plot")
    except cli.UsageError as e:
        cli.fail(e)
    if not all(x.strip().isdigit() for x in args.seeds.split(",")):
        cli.fail(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    args.argv = ["bench/cheap_exits.py"] + list(argv)
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.quality_commands:
        print("\n".join(quality_commands([int(s) for s in args.seeds.split(",")],
                                         args.quality_steps)))
    elif args.quality_report:
        quality_report(args)
    else:
        os.makedirs(args.out, exist_ok=True)
        run_speed(args)


if __name__ == "__main__":
    main()
