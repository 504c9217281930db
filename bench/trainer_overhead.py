"""The plain path pays nothing for the research (issue #16): a plain-model step of train_gpt2.py
against a minimal nanoGPT-style loop on the same model, data and settings.

    python bench.py --trainer-overhead            # or: python bench/trainer_overhead.py
    python bench/trainer_overhead.py --rounds 7 --steps 80

Shape: 4 layers x 128, 4 heads, T 64, B 12, char-level tiny Shakespeare (65 symbols; the
stdlib's pydoc text reduced to those characters when ../shared has no copy), fp32 CPU, plain
GPT-2 (separate blocks, final head only, trainer defaults otherwise: AdamW, clip 1.0, cosine LR).

Cases, each a fresh subprocess, interleaved A B A B ... over --rounds rounds:
  minimal   nanoGPT's loop: get_batch (random offsets into the memmapped train shard), forward
            `logits, loss = model(x, y)`, backward, clip_grad_norm_, AdamW step, zero_grad,
            `loss.item()` (what a loop prints) every step
  trainer   `python train_gpt2.py` itself with its defaults, logging every step (log_interval=1:
            the train line + jsonl event), no eval/sample/size/checkpoint events until its last
            step; a plain model's per-layer statistics (allloss, earlystopdict) are computed
            only on SIZE steps by default (stats_interval=0), so these train lines print nan
  trainer-stats   the same with --stats_interval=1 (the default before 2026-12-01): those
            statistics on every logged step, an extra no-grad forward of stats_rows=4 sequences
            with a head after every layer: what the research statistics cost a plain model
Per round and case: median wall time per step over steps [warmup, steps - 2) from per-step
timestamps (the trainer's: its jsonl train events, i.e. one whole loop iteration). Reported:
the trainer/minimal ratio per round, median and min..max. Writes bench/results/
trainer-overhead-<date>.md and .json, with the aten calls per step of each case counted by
torch.profiler in-process (the trainer through its own setup() and train_step; a count does
not depend on the machine's load).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

SHAPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, T=64, B=12)
SHAKESPEARE = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt")
_CHARS = set("\n !$&',-.3:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
TAG = "STEP_TIMES "


def make_data(d):
    """A char-level dataset (fineweb.py --tokenizer char) of tiny Shakespeare -> its directory."""
    src = SHAKESPEARE
    if not os.path.isfile(src):
        from pydoc_data.topics import topics
        text = "".join(c for c in "\n".join(topics[k] for k in sorted(topics)) if c in _CHARS)
        src = os.path.join(d, "prose.txt")
        with open(src, "w") as f:
            f.write(text[:1_000_000])
    out = os.path.join(d, "char")
    import fineweb
    rc = fineweb.main(["--source", src, "--tokenizer", "char", "--out", out, "--quiet",
                       "--procs", "1"])
    if rc not in (0, None):
        raise SystemExit(f"error: building the char dataset failed ({rc})")
    return out


def trainer_args(data, log_dir, steps, vocab):
    s = SHAPE
    return [f"--dataset={data}", f"--log_dir={log_dir}", f"--img_dir={log_dir}/img",
            "--run_name=overhead", f"--n_layer={s['n_layer']}", f"--n_head={s['n_head']}",
            f"--n_embd={s['n_embd']}", f"--block_size={s['block_size']}", f"--T={s['T']}",
            f"--B={s['B']}", f"--total_batch_size={s['B'] * s['T']}", f"--vocab_size={vocab}",
            f"--max_steps={steps}", "--warmup_steps=10", "--max_lr=1e-3", "--log_interval=1",
            "--eval_interval=0", "--sample_interval=0", "--size_interval=0",
            "--checkpoint_interval=0", "--eval_iters=1", "--device=cpu", "--dtype=float32",
            "--compile=False", "--verify_data=False"]


def minimal_step_fn(data, vocab, model=None, opt=None):
    """One step of the reference loop as a function (a fresh seeded model and AdamW unless
    given)."""
    import numpy as np
    import torch
    import fineweb
    from model import GPT, GPTConfig
    s = SHAPE
    if model is None:
        torch.manual_seed(1337)
        model = GPT(GPTConfig(block_size=s["block_size"], vocab_size=vocab, n_layer=s["n_layer"],
                              n_head=s["n_head"], n_embd=s["n_embd"]))
        opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    meta = fineweb.read_manifest(data)
    tokens = fineweb.load_tokens(fineweb.shard_paths(meta, "train")[0])
    B, T = s["B"], s["T"]

    def get_batch():
        ix = torch.randint(len(tokens) - T - 1, (B,))
        x = torch.stack([torch.from_numpy(tokens[i:i + T].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(tokens[i + 1:i + 1 + T].astype(np.int64)) for i in ix])
        return x, y

    def step():
        x, y = get_batch()
        logits, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
    return step


def minimal_main(data, steps, vocab):
    """The reference loop; prints the per-step timestamps."""
    step, stamps = minimal_step_fn(data, vocab), []
    for _ in range(steps):
        step()
        stamps.append(time.time())
    print(TAG + json.dumps(stamps), flush=True)


def op_counts(data, vocab, steps=4):
    """aten calls per step under torch.profiler (a count, not a time: the same on a loaded
    machine) -> {minimal, trainer (train_step + log line, defaults), trainer-stats (want_stats:
    the per-layer statistics forward)}; the trainer in-process through its own setup()."""
    import contextlib
    import io
    from torch.profiler import ProfilerActivity, profile
    import train_gpt2 as tg
    from distributed import DistContext
    out = {}
    with tempfile.TemporaryDirectory() as log_dir, contextlib.redirect_stdout(io.StringIO()):
        cfg, _ = tg.parse_config(trainer_args(data, log_dir, 100, vocab))
        s, _ = tg.setup(cfg, DistContext(), [])

        def trainer_step(i, stats):
            batches = [s.train_loader.next_batch() for _ in range(s.grad_accum)]
            r = tg.train_step(s, batches, 1e-3, i, want_stats=stats)
            r.update(dt=0.03, **tg.runlog.throughput(1.0, cfg["total_batch_size"], 1, 0.03))
            tg.log_train(s, i, r)
        cases = {"minimal": minimal_step_fn(data, vocab, s.raw, s.optimizer),
                 "trainer": lambda i: trainer_step(i, False),
                 "trainer-stats": lambda i: trainer_step(i, True)}
        for name, fn in cases.items():
            for i in range(2):
                fn(i) if name != "minimal" else fn()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for i in range(steps):
                    fn(i) if name != "minimal" else fn()
            out[name] = sum(e.count for e in prof.key_averages()
                            if e.key.startswith("aten::")) / steps
        s.log.close()
        s.lock.release()
    return out


def step_time(stamps, warmup):
    """Median seconds per step over the steps between stamp[warmup] and stamp[-2] (the last
    step is excluded: the trainer evaluates and checkpoints there). The median, not the mean:
    a burst of another process's load stalls a few steps of one case, not the typical step."""
    return statistics.median(b - a for a, b in zip(stamps[warmup:-2], stamps[warmup + 1:-1]))


CASES = {"minimal": None, "trainer": [], "trainer-stats": ["--stats_interval=1"]}


def run_case(case, data, steps, vocab, env):
    if case == "minimal":
        p = subprocess.run([sys.executable, __file__, "--_minimal", data, str(steps), str(vocab)],
                           capture_output=True, text=True, env=env, cwd=ROOT)
        if p.returncode:
            raise SystemExit(f"error: minimal loop failed: {p.stderr[-500:]}")
        line = next(l for l in p.stdout.splitlines() if l.startswith(TAG))
        return json.loads(line[len(TAG):])
    with tempfile.TemporaryDirectory() as log_dir:
        p = subprocess.run([sys.executable, os.path.join(ROOT, "train_gpt2.py")]
                           + trainer_args(data, log_dir, steps, vocab) + CASES[case],
                           capture_output=True, text=True, env=env, cwd=ROOT)
        if p.returncode:
            raise SystemExit(f"error: trainer failed: {p.stderr[-500:]}")
        with open(os.path.join(log_dir, "overhead.jsonl")) as f:
            events = [json.loads(l) for l in f]
    return [e["time"] for e in events if e["event"] == "train"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=60, help="steps per case and round")
    ap.add_argument("--warmup", type=int, default=8, help="steps not timed")
    ap.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS (0: torch default)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--_minimal", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._minimal:
        return minimal_main(args._minimal[0], int(args._minimal[1]), int(args._minimal[2]))
    if args.rounds < 1 or args.steps < args.warmup + 4:
        raise SystemExit("error: need --rounds >= 1 and --steps >= --warmup + 4")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as d:
        data = make_data(d)
        with open(os.path.join(data, "meta.json")) as f:
            vocab = int(json.load(f)["vocab_size"])
        per = {c: [] for c in CASES}
        for r in range(args.rounds):
            for case in per:
                per[case].append(step_time(run_case(case, data, args.steps, vocab, env), args.warmup))
            print(f"round {r + 1}: " + ", ".join(f"{c} {v[-1] * 1e3:.2f} ms" for c, v in per.items()),
                  flush=True)
        ops = op_counts(data, vocab)
    ratios = {c: [t / m for t, m in zip(per[c], per["minimal"])] for c in CASES if c != "minimal"}
    report = {"shape": SHAPE, "vocab_size": vocab, "rounds": args.rounds, "steps": args.steps,
              "warmup": args.warmup, "step_s": per, "ratios": ratios,
              "ratio_median": {c: statistics.median(v) for c, v in ratios.items()}, "device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
              "loadavg": os.getloadavg(), "date": datetime.date.today().isoformat(), "aten_calls_per_step": ops}
    md = render(report)
    print(md)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"trainer-overhead-{report['date']}")
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(md)
    return 0


def render(r):
    ratios, med = r["ratios"], r["ratio_median"]
    what = {"trainer": "train_gpt2.py, plain model, log every step (defaults)",
            "trainer-stats": "train_gpt2.py, plain model, log every step, --stats_interval=1"}
    ms = {c: statistics.median(v) * 1e3 for c, v in r["step_s"].items()}
    s = r["shape"]
    return "\n".join([
        "# Plain-path overhead: train_gpt2.py step vs a minimal nanoGPT loop (issue #16)",
        "",
        f"{s['n_layer']} layers x {s['n_embd']}, {s['n_head']} heads, T {s['T']}, B {s['B']}, "
        f"vocab {r['vocab_size']} (char), fp32; device {r['device']}; load average "
        f"{', '.join(f'{x:.1f}' for x in r['loadavg'])}; {r['rounds']} rounds interleaved "
        f"(minimal, trainer, trainer-stats, minimal, ...), {r['steps']} steps each, median step after "
        f"{r['warmup']} warm-up steps.",
        "",
        "| case | median step (ms, this machine, not a result) | trainer / minimal (median, min..max over rounds) |",
        "|---|---|---|",
        f"| minimal (nanoGPT-style loop) | {ms['minimal']:.2f} | 1 |",
    ] + [f"| {what[c]} | {ms[c]:.2f} | **{med[c]:.3f}** ({min(v):.3f}..{max(v):.3f}) |"
         for c, v in ratios.items()] + ([
        "",
        "aten calls per step (torch.profiler, in-process; a count, not a time): "
        + ", ".join(f"{c} {n:,.0f}" for c, n in r["aten_calls_per_step"].items()) + "."]
        if r.get("aten_calls_per_step") else []) + [""])


if __name__ == "__main__":
    sys.exit(main())
