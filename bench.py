"""Training-step benchmark: per-layer heads (naive / checkpoint / fused) vs a plain GPT-2.

    python bench.py --quick                      # CPU proxy shape, < 3 min on 2 cores
    python bench.py                              # GPT-2 124M shape (B=16, T=1024), bf16 on CUDA
    python bench.py --trainer-overhead [...]     # train_gpt2.py step vs a minimal loop (bench/trainer_overhead.py)
    python bench.py --device cuda --B 32 --compile --cases plain,plain-fused,shared-fused

Every case runs in a fresh subprocess on the same shape and the same random tokens: build the
model and AdamW, `warmup` full training steps (forward, backward, optimizer step), then `steps`
timed ones. Per case: tokens/s (fastest step on CPU, which other jobs may share; median step on
CUDA; --repeat rounds keep each case's best), peak memory (CUDA: max_memory_allocated over the
timed steps; CPU: peak RSS of the subprocess, absolute and minus its RSS after the model was
built), training FLOPs per token counting every head (`flops_per_token`), achieved TFLOP/s and
MFU (CUDA: the GPU's dense bf16 peak; CPU: the best fp32 GEMM rate measured here first).

Cases (issue 8):
  plain               plain GPT-2, final head only, naive head (logits materialised, as nanoGPT)
  plain-fused         plain GPT-2, final head only, fused head
  shared-naive        shared block + a head after every layer, naive
  shared-checkpoint   shared + all-layer heads, checkpointed naive head
  shared-fused        shared + all-layer heads, fused head
  shared-fused-early  shared-fused with early exit (exit_loss --exit-loss, default 4-test)

Ratios (targets): FLOP-bound tok/s = tok/s_plain * FLOPs_plain / FLOPs_all; shared-fused tok/s
over it (>= 0.9), shared-fused peak memory over plain (<= 1.2), fused / naive memory. The plain
reference is reported both with the naive head (nanoGPT) and with the fused head.
Writes <out>/<device-slug>-<date>[-quick].md and .json and copies the table to <out>/LATEST.md.

    python bench.py --memory [--validate]        # predicted CUDA peak memory (bench/memory_model.py)
    python bench.py --gpu-check [--dry-run]      # the one-command GPU check (bench/gpu_check.py)
    python bench.py --cheap-exits                # sampled exit heads vs all heads vs plain (bench/cheap_exits.py)
    python bench.py --decode                     # decode speed: early exit, self-speculative (bench/decode_bench.py)
"""
import argparse
import datetime
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time

import cli
import fineweb

HERE = os.path.dirname(os.path.abspath(__file__))
SUBCOMMANDS = {"--memory": "memory_model", "--gpu-check": "gpu_check",     # flag -> bench/ module
               "--cheap-exits": "cheap_exits", "--decode": "decode_bench",
               "--trainer-overhead": "trainer_overhead"}

CASES = {   # name -> GPTConfig overrides on top of the shape
    "plain": dict(share_weights=False, layer_heads=False, head_impl="naive"),
    "plain-fused": dict(share_weights=False, layer_heads=False, head_impl="fused"),
    "shared-naive": dict(share_weights=True, layer_heads=True, exit_loss="all-layers",
                         head_impl="naive"),
    "shared-checkpoint": dict(share_weights=True, layer_heads=True, exit_loss="all-layers",
                              head_impl="checkpoint"),
    "shared-fused": dict(share_weights=True, layer_heads=True, exit_loss="all-layers",
                         head_impl="fused"),
    "shared-fused-early": dict(share_weights=True, layer_heads=True, early_exit=True,
                               head_impl="fused"),   # exit_loss from --exit-loss
}
QUICK_SHAPE = dict(n_layer=4, n_head=4, n_embd=128, vocab_size=50304, B=4, T=128)
FULL_SHAPE = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50304, B=16, T=1024)
RESULT_TAG = "BENCH_RESULT "
# glibc: a fixed mmap threshold (which also turns off its dynamic growth up to 32 MiB) gives
# every allocation >= 1 MiB its own mapping that is unmapped on free, so a case's peak RSS is its
# peak live memory rather than heap fragmentation that grows with the number of steps
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2 ** 20)}


def flops_per_token(model, T):
    """Training (fwd + bwd) FLOPs per token counting every head: the model's own estimate if it
    has one, else 6 * (matmul weights applied per token, a shared block n_layer times)
    + 12 * n_layer * C * T (attention) + 6 * C * V per head computed."""
    if hasattr(model, "flops_per_token"):
        return float(model.flops_per_token(T))
    import torch.nn as nn
    cfg = model.config
    blk = model.transformer.h[0]
    w = sum(m.weight.numel() for m in blk.modules() if isinstance(m, nn.Linear))
    n_heads = cfg.n_layer if (cfg.layer_heads or cfg.early_exit) else 1
    return float(6 * cfg.n_layer * w + 12 * cfg.n_layer * cfg.n_embd * T
                 + 6 * cfg.n_embd * cfg.vocab_size * n_heads)


# ----------------------------------------------------------------------------------------------
# worker: one case in a fresh process

def _maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


def run_case(spec):
    """Build the case's model, run warmup + timed training steps, return a metrics dict."""
    import torch
    sys.path.insert(0, HERE)
    from model import GPT, GPTConfig

    dev = spec["device"]
    torch.manual_seed(0)
    shape = spec["shape"]
    cfg = GPTConfig(block_size=shape["T"], vocab_size=shape["vocab_size"],
                    n_layer=shape["n_layer"], n_head=shape["n_head"], n_embd=shape["n_embd"],
                    dropout=0.0, bias=True, **spec["overrides"])
    model = GPT(cfg).to(dev)
    model.train()
    opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), dev)
    if spec["compile"]:
        model.compile_blocks(backend=spec.get("backend", "inductor"))   # as train_gpt2.py does
    B, T = shape["B"], shape["T"]
    g = torch.Generator().manual_seed(1234)
    data = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=g).to(dev)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[spec["dtype"]]
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev, dtype=dtype, enabled=dtype is not None):
            _, loss = model(x, y, return_logits=False)
        loss.backward()
        opt.step()
        return loss

    sync()
    base_rss = _maxrss_mb()
    base_alloc = torch.cuda.memory_allocated() / 2**20 if dev == "cuda" else None
    for _ in range(spec["warmup"]):
        step()
    sync()
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for _ in range(spec["steps"]):
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss))
    fpt = flops_per_token(model, T)
    dt = min(times) if spec["stat"] == "best" else statistics.median(times)
    res = {"step_s_stat": dt, "step_s": times, "tok_per_s": B * T / dt,
           "flops_per_token": fpt, "tflops": B * T / dt * fpt / 1e12, "loss": losses[-1],
           "losses": losses,
           "params": model.get_num_params(), "base_rss_mb": base_rss,
           "peak_rss_mb": _maxrss_mb()}
    res["delta_rss_mb"] = res["peak_rss_mb"] - base_rss
    if dev == "cuda":
        res["base_alloc_mb"] = base_alloc
        res["peak_alloc_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:   # the GEMM rate right after this case's steps (the CPU may be shared)
        res["gemm_flops"] = measure_gemm(dev, spec["dtype"])
    return res


def worker_main(arg):
    spec = json.loads(arg)
    if spec["threads"]:
        import torch
        torch.set_num_threads(spec["threads"])
    print(RESULT_TAG + json.dumps(run_case(spec)), flush=True)


# ----------------------------------------------------------------------------------------------
# driver

def cpu_info():
    """{cpu, cpu_count, usable_cpus, loadavg} of this machine (the CPU model from /proc/cpuinfo)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "cpu_count": os.cpu_count(), "usable_cpus": usable,
            "loadavg": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None}


def device_info(dev):
    import torch
    info = {"torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads()}
    if dev == "cuda":
        info["name"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    else:
        cpu = cpu_info()
        info["name"] = cpu["cpu"]
        info["usable_cpus"] = cpu["usable_cpus"]
        info["loadavg"] = cpu["loadavg"]
    return info


def peak_flops(dev, info, dtype):
    """(FLOP/s, how it was obtained). CUDA: the data-sheet dense peak for the dtype (bf16/fp16)
    when the GPU is known; otherwise (and on CPU) the best measured GEMM rate."""
    if dev == "cuda" and dtype in ("bf16", "fp16"):
        from runlog import peak_bf16_flops
        known = peak_bf16_flops(info["name"])
        if known:
            return known[1], f"{known[0]} dense {dtype} data sheet"
    n = 1024 if dev == "cpu" else 8192
    return measure_gemm(dev, dtype), (f"measured {n}^3 {dtype} GEMM, best of 8"
                                      + (", here and after each case" if dev == "cpu" else ""))


def measure_gemm(dev, dtype):
    """Best FLOP/s of an n^3 matmul (n = 1024 on CPU, 8192 on CUDA) over 8 runs."""
    import torch
    n = 1024 if dev == "cpu" else 8192
    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    a = torch.randn(n, n, device=dev, dtype=tdt)
    b = torch.randn(n, n, device=dev, dtype=tdt)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    best = float("inf")
    for _ in range(8):
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def launch(case, spec, timeout):
    """Run one case in a fresh interpreter; returns metrics or {'status': 'oom'|'error', ...}."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE,
                           env=dict(os.environ, **WORKER_ENV))
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "wall_s": timeout}
    wall = time.perf_counter() - t0
    for line in p.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            res = json.loads(line[len(RESULT_TAG):])
            res.update(status="ok", wall_s=wall)
            return res
    err = (p.stderr or "").strip().splitlines()
    status = "oom" if re.search(r"out of memory|OutOfMemory", p.stderr or "") else "error"
    return {"status": status, "wall_s": wall, "error": err[-1] if err else f"rc {p.returncode}"}


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def mem_of(r, dev):
    """The peak-memory figure compared across cases: CUDA max_memory_allocated; CPU peak RSS
    growth over the post-build baseline (the training step's own memory)."""
    if r.get("status") != "ok":
        return None
    return r["peak_alloc_mb"] if dev == "cuda" else r["delta_rss_mb"]


def summarize(results, dev):
    """Issue-8 ratios from one run; plain reference with the naive head and with the fused head."""
    ok = {k: v for k, v in results.items() if v.get("status") == "ok"}
    out = {}
    fused = ok.get("shared-fused")
    for ref in ("plain", "plain-fused"):
        p = ok.get(ref)
        if not p or not fused:
            continue
        bound = p["tok_per_s"] * p["flops_per_token"] / fused["flops_per_token"]
        out[f"flop_bound_tok_per_s[{ref}]"] = bound
        out[f"fused_tput_over_flop_bound[{ref}]"] = fused["tok_per_s"] / bound
        out[f"fused_mem_over_plain[{ref}]"] = ratio(mem_of(fused, dev), mem_of(p, dev))
    if "shared-naive" in ok and fused:
        out["fused_mem_over_naive"] = ratio(mem_of(fused, dev), mem_of(ok["shared-naive"], dev))
        out["fused_tput_over_naive"] = fused["tok_per_s"] / ok["shared-naive"]["tok_per_s"]
    if "shared-checkpoint" in ok and fused:
        out["fused_mem_over_checkpoint"] = ratio(mem_of(fused, dev),
                                                 mem_of(ok["shared-checkpoint"], dev))
    return out


def fmt(v, spec="{:,.1f}"):
    return "-" if v is None else spec.format(v)


def render_md(report):
    dev, info, shape = report["device"], report["device_info"], report["shape"]
    mem_name = "peak alloc MiB" if dev == "cuda" else "peak RSS MiB (abs / step Δ)"
    lines = [f"# Training-step benchmark — {info['name']}, {report['date']}", "",
             f"`{report['command']}`  ",
             f"device: {dev} ({info['name']}), torch {info['torch']}, python {info['python']}, "
             f"threads {info['threads']}"
             + (f", load avg {info['loadavg']}" if "loadavg" in info else "") + "  ",
             f"shape: n_layer {shape['n_layer']}, n_head {shape['n_head']}, n_embd "
             f"{shape['n_embd']}, V {shape['vocab_size']}, B {shape['B']}, T {shape['T']} "
             f"({shape['B'] * shape['T']} tokens/step); dtype {report['dtype']}, compile "
             f"{report['compile']}; {report['warmup']} warmup + {report['steps']} timed steps, "
             f"{report['stat']} step, best of {report['repeat']} round(s); early exit: exit_loss {report['exit_loss']}  ",
             f"MFU peak: {report['peak_flops'] / 1e12:.2f} TFLOP/s ({report['peak_source']})  ",
             f"git: {report['git']}", "",
             f"| case | head | tok/s | step ms | GFLOP/tok | TFLOP/s | MFU | {mem_name} | loss |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in report["results"].items():
        ov = CASES[name]
        if r.get("status") != "ok":
            lines.append(f"| {name} | {ov['head_impl']} | {r.get('status')}: "
                         f"{r.get('error', '')[:80]} | | | | | | |")
            continue
        if dev == "cuda":
            mem = f"{r['peak_alloc_mb']:,.0f}"
        else:
            mem = f"{r['peak_rss_mb']:,.0f} / {r['delta_rss_mb']:,.0f}"
        lines.append(f"| {name} | {ov['head_impl']} | {r['tok_per_s']:,.0f} | "
                     f"{r['step_s_stat'] * 1e3:,.0f} | {r['flops_per_token'] / 1e9:.3f} | "
                     f"{r['tflops']:.3f} | {r['mfu'] * 100:.1f}% | {mem} | {r['loss']:.3f} |")
    s = report["ratios"]
    lines += ["", "| ratio (issue 8 target) | vs plain (naive head) | vs plain (fused head) |",
              "|---|---:|---:|"]
    for key, label in (("fused_mem_over_plain", "shared-fused peak mem / plain (≤ 1.2)"),
                       ("flop_bound_tok_per_s", "FLOP-bound tok/s for all-layer heads"),
                       ("fused_tput_over_flop_bound",
                        "shared-fused tok/s / FLOP-bound (≥ 0.9)")):
        spec = "{:,.0f}" if key == "flop_bound_tok_per_s" else "{:.3f}"
        lines.append(f"| {label} | {fmt(s.get(f'{key}[plain]'), spec)} | "
                     f"{fmt(s.get(f'{key}[plain-fused]'), spec)} |")
    lines += ["", f"shared-fused / shared-naive: memory {fmt(s.get('fused_mem_over_naive'), '{:.3f}')}, "
              f"throughput {fmt(s.get('fused_tput_over_naive'), '{:.3f}')}; "
              f"fused / checkpoint memory {fmt(s.get('fused_mem_over_checkpoint'), '{:.3f}')}.",
              "CPU memory compares the step's RSS growth over the post-build baseline (the "
              "subprocess's peak RSS minus its RSS once model and data exist)." if dev == "cpu"
              else "CUDA memory: max_memory_allocated over the timed steps (params, grads, "
              "AdamW state and the step's activations)."]
    return "\n".join(lines) + "\n"


def git_version():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                             capture_output=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=HERE, text=True, capture_output=True).stdout.strip()
        return (rev or "unknown") + (" (dirty)" if dirty else "")
    except OSError:
        return "unknown"


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def parse_args(argv):
    ap = cli.Parser(prog="bench.py", description=cli.doc_head(__doc__))
    ap.add_argument("--quick", action="store_true", help="CPU proxy shape, < 3 min on 2 cores")
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None,
                    help="None: cuda if available else cpu")
    ap.add_argument("--out", default=os.path.join(HERE, "bench", "results"), help="results directory")
    ap.add_argument("--cases", default=",".join(CASES),
                    help=f"comma-separated subset of {','.join(CASES)}")
    ap.add_argument("--exit-loss", default="4-test", help="exits.EXIT_LOSSES name for the "
                    "early-exit case")
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None,
                    help="autocast dtype (None: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--compile", action="store_true", help="regional torch.compile of blocks")
    ap.add_argument("--warmup", type=cli.int_arg(0), default=None,
                    help="untimed steps (None: 1 with --quick, else 3)")
    ap.add_argument("--steps", type=cli.int_arg(1), default=None,
                    help="timed steps (None: 3 with --quick, else 10)")
    ap.add_argument("--threads", type=cli.int_arg(0, 4096), default=0, help="torch threads per case (0: default)")
    ap.add_argument("--stat", choices=["best", "median"], default=None,
                    help="step time reported: fastest timed step (None: best on CPU, which may be "
                    "shared; median on CUDA)")
    ap.add_argument("--repeat", type=cli.int_arg(1), default=1,
                    help="rounds over all cases (fresh processes), keeping each case's fastest")
    ap.add_argument("--timeout", type=cli.float_arg(1), default=600.0, help="seconds per case")
    for k in FULL_SHAPE:
        ap.add_argument(f"--{k}", type=cli.int_arg(1, 1 << 20), default=None,
                        help="override the shape (None: the --quick or full shape)")
    ap.add_argument("--memory", action="store_true", help="predicted peak memory of one training "
                    "step instead (bench/memory_model.py; its options: bench.py --memory --help)")
    ap.add_argument("--gpu-check", action="store_true", help="the GPU check instead "
                    "(bench/gpu_check.py; its options: bench.py --gpu-check --help)")
    ap.add_argument("--cheap-exits", action="store_true", help="the cheap-exit suite instead "
                    "(bench/cheap_exits.py; its options: bench.py --cheap-exits --help)")
    ap.add_argument("--decode", action="store_true", help="the decode-speed benchmark instead "
                    "(bench/decode_bench.py; its options: bench.py --decode --help)")
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker is None:
        try:
            cli.check_output(args.out, "--out", is_dir=True)
        except cli.UsageError as e:
            cli.fail(e)
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    for flag, name in SUBCOMMANDS.items():
        if flag in argv:      # a bench/ module with its own options
            sys.path.insert(0, os.path.join(HERE, "bench"))
            return __import__(name).main([a for a in argv if a != flag])
    args = parse_args(argv)
    if args._worker is not None:
        return worker_main(args._worker)
    import torch
    sys.path.insert(0, HERE)
    import exits

    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev == "cuda" and not torch.cuda.is_available():
        cli.fail("--device cuda but torch.cuda.is_available() is False")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown or not cases:
        cli.fail(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    if args.exit_loss not in exits.EXIT_LOSSES:
        cli.fail(f"unknown --exit-loss {args.exit_loss!r}; known: {', '.join(exits.EXIT_LOSSES)}")
    shape = dict(QUICK_SHAPE if args.quick else FULL_SHAPE)
    for k in shape:
        if getattr(args, k) is not None:
            shape[k] = getattr(args, k)
    if shape["n_embd"] % shape["n_head"]:
        cli.fail(f"n_embd {shape['n_embd']} not divisible by n_head {shape['n_head']}")
    dtype = args.dtype or ("bf16" if dev == "cuda" else "fp32")
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    steps = args.steps if args.steps is not None else (3 if args.quick else 10)
    stat = args.stat or ("median" if dev == "cuda" else "best")
    os.makedirs(args.out, exist_ok=True)

    info = device_info(dev)
    print(f"device: {dev} — {info['name']}; torch {info['torch']}; threads {info['threads']}"
          + (f"; load avg {info['loadavg']}" if "loadavg" in info else ""), flush=True)
    peak, peak_src = peak_flops(dev, info, dtype)
    print(f"MFU peak: {peak / 1e12:.2f} TFLOP/s ({peak_src})", flush=True)
    results = {}
    for rnd in range(args.repeat):
        for name in cases:
            overrides = dict(CASES[name])
            if overrides.get("early_exit"):
                overrides["exit_loss"] = args.exit_loss
            spec = dict(device=dev, shape=shape, overrides=overrides, dtype=dtype, stat=stat,
                        compile=args.compile, warmup=warmup, steps=steps, threads=args.threads)
            r = launch(name, spec, args.timeout)
            if r["status"] == "ok":
                print(f"  [{rnd + 1}] {name:20s} {r['tok_per_s']:10,.0f} tok/s  "
                      f"{r['tflops']:.3f} TFLOP/s  mem {mem_of(r, dev):8,.0f} MiB  "
                      f"({r['wall_s']:.0f}s)", flush=True)
            else:
                print(f"  [{rnd + 1}] {name:20s} {r['status']}: {r.get('error', '')}", flush=True)
            r["config"] = overrides
            prev = results.get(name)
            rounds = (prev or {}).get("rounds_tok_per_s", []) + [r.get("tok_per_s")]
            if prev is None or (r["status"] == "ok" and
                                (prev["status"] != "ok" or r["tok_per_s"] > prev["tok_per_s"])):
                results[name] = r
            results[name]["rounds_tok_per_s"] = rounds
    if dev == "cpu":    # the best GEMM rate seen in any process is the peak
        peak = max([peak] + [r.get("gemm_flops", 0) for r in results.values()])
    for r in results.values():
        if r["status"] == "ok":
            r["mfu"] = r["tflops"] * 1e12 / peak

    today = datetime.date.today().isoformat()
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": shlex.join([sys.executable] + (sys.argv if argv is None
                                                        else ["bench.py"] + list(argv))),
              "argv": sys.argv, "device": dev, "device_info": info, "shape": shape,
              "dtype": dtype, "compile": args.compile, "warmup": warmup, "steps": steps,
              "exit_loss": args.exit_loss, "quick": args.quick, "stat": stat,
              "repeat": args.repeat, "peak_flops": peak,
              "peak_source": peak_src, "git": git_version(), "results": results,
              "ratios": summarize(results, dev)}
    md = render_md(report)
    dev_slug = slug(f"{dev}-{info['name']}") + ("-quick" if args.quick else "")
    base = os.path.join(args.out, f"{dev_slug}-{today}")
    fineweb.write_text_atomic(base + ".json", json.dumps(report, indent=1) + "\n")
    fineweb.write_text_atomic(base + ".md", md)
    fineweb.write_text_atomic(os.path.join(args.out, "LATEST.md"),
                 md + f"\n(copy of `{os.path.basename(base)}.md`)\n")
    print()
    print(md)
    print(f"wrote {base}.md, {base}.json, {os.path.join(args.out, 'LATEST.md')}")


if __name__ == "__main__":
    raise SystemExit(main())
