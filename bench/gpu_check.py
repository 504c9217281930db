"""The GPU check: one command that says whether the CUDA path works on this machine (<= 10 min on
one H100/H200; uses every local GPU for the training run).

    python bench.py --gpu-check                 # on a CUDA machine
    python bench.py --gpu-check --dry-run       # the same plumbing on CPU at a tiny shape

Items (each PASS/FAIL with its numbers; a failing item does not stop the others):
  compile      eager vs regional torch.compile (GPT.compile_blocks; inductor, --dry-run: Dynamo
               capture only): step time, and the losses of the same steps agree (shared + all
               heads + early exit, bf16)
  bf16         bf16 autocast vs fp32 losses of the same steps agree within 2 %
  memory       peak memory (max_memory_allocated) of naive vs fused all-layer heads at 124M, and
               each against bench/memory_model.py's prediction (within 15 %)
  mfu          model FLOP utilisation of plain GPT-2 124M and of the shared early-exit model
               (compiled, bf16; against the GPU's dense bf16 peak)
  torchrun     `torchrun --nproc_per_node=<all GPUs> train_gpt2.py config/4-test.py` for 100
               steps on the builtin corpus: the loss falls, every train line has the journal's
               format, the final checkpoint loads (checkpoint.load_model) and a resumed run
               continues from it
Each model case runs in a fresh process (bench.py's worker). Writes <out>/<gpu>-<date>.md.
Exit status: 0 all PASS, 1 some FAIL, 2 bad input / no CUDA without --dry-run.
"""
import argparse
import contextlib
import datetime
import glob
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

import bench  # noqa: E402  (bench.py: the worker, device info, peak FLOP/s)
import fineweb  # noqa: E402
import memory_model  # noqa: E402

# (GPU, dry run) settings
GPU = dict(shape=dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50304, B=16, T=1024),
           mem_shape=dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50304, B=16, T=1024),
           mem_B=8, warmup=3, steps=10, backend="inductor", train_steps=100, resume_steps=10,
           train_args=["--B=16", "--T=1024"], corpus_chars=4_000_000, timeout=600)
DRY = dict(shape=dict(n_layer=2, n_head=2, n_embd=64, vocab_size=512, B=4, T=64),
           mem_shape=dict(n_layer=2, n_head=2, n_embd=64, vocab_size=512, B=8, T=256),
           mem_B=4, warmup=1, steps=2, backend="eager", train_steps=4, resume_steps=2,
           train_args=["--B=4", "--T=64", "--n_layer=2", "--n_head=2", "--n_embd=64",
                       "--block_size=64", "--device=cpu", "--compile=False"],
           corpus_chars=300_000, timeout=300)
EARLY = dict(share_weights=True, layer_heads=True, early_exit=True, exit_mode="sample",
             exit_loss="4-test", head_impl="fused")
PLAIN = dict(share_weights=False, layer_heads=False, head_impl="fused")
ALL_NAIVE = dict(share_weights=True, exit_loss="all-layers", head_impl="naive")
ALL_FUSED = dict(share_weights=True, exit_loss="all-layers", head_impl="fused")
# the journal's train line, exactly as train_gpt2.format_train_line writes it
TRAIN_LINE = re.compile(
    r"^@ (\d+) train (\d+\.\d{4}) , allloss: -?\d+\.\d{4}, confloss: -?\d+\.\d{4}, "
    r"targetloss: -?\d+\.\d{4}, earlystop: \d\.\d{3}, earlystopdict: \[[^\]]*\], "
    r"lr:\d\.\d{4}e[-+]\d\d, norm:\d+\.\d{4}, dt: \d+\.\d{2}ms, tok/sec: \d+\.\d{2}, "
    r"flops:\d+\.\d{2}, batch-reuse:\d+(, skipped:\d+)?$")


class Check:
    """Runs the items on one device with one settings dict; collects (item, ok, detail)."""

    def __init__(self, dev, cfg, work):
        self.dev, self.cfg, self.work = dev, cfg, work
        self.dtype = "bf16"
        self.rows = []
        self.cache = {}

    def case(self, overrides, dtype="bf16", compile=False):
        """bench.py's worker on this device in a fresh process, once per distinct case;
        metrics dict (raises on failure)."""
        cfg = self.cfg
        spec = dict(device=self.dev, shape=cfg["shape"], overrides=overrides, dtype=dtype,
                    stat="median", compile=compile, backend=cfg["backend"], warmup=cfg["warmup"],
                    steps=cfg["steps"], threads=0)
        key = json.dumps(spec, sort_keys=True)
        if key not in self.cache:
            r = bench.launch("gpu-check", spec, cfg["timeout"])
            if r["status"] != "ok":
                raise RuntimeError(f"{r['status']}: {r.get('error', '')}")
            self.cache[key] = r
        return self.cache[key]

    def item(self, name, fn):
        t0 = time.perf_counter()
        try:
            ok, detail = fn()
        except Exception as e:   # an item that crashes is a FAIL with its error, the rest go on
            ok, detail = False, f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
        detail += f" ({time.perf_counter() - t0:.0f} s)"
        self.rows.append((name, ok, detail))
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)

    # -- items ---------------------------------------------------------------------------------

    def compile(self):
        e = self.case(EARLY, compile=False)
        c = self.case(EARLY, compile=True)
        rel = _max_rel(e["losses"], c["losses"])
        speed = e["step_s_stat"] / c["step_s_stat"]
        return rel < 1e-2, (f"shared early-exit, B={self.cfg['shape']['B']}: eager "
                            f"{e['step_s_stat'] * 1e3:.1f} ms/step, compiled "
                            f"{c['step_s_stat'] * 1e3:.1f} ms/step ({speed:.2f}x); losses max rel "
                            f"diff {rel:.2e} over {len(e['losses'])} steps (bound 1e-2)")

    def bf16(self):
        lo = self.case(EARLY, dtype="bf16")
        hi = self.case(EARLY, dtype="fp32")
        rel = _max_rel(hi["losses"], lo["losses"])
        return rel < 2e-2, (f"shared early-exit: bf16 vs fp32 losses max rel diff {rel:.2e} over "
                            f"{len(lo['losses'])} steps (bound 2e-2)")

    def memory(self):
        shape, B = self.cfg["mem_shape"], self.cfg["mem_B"]
        parts, ok = [], True
        for label, ov, b in (("naive all-layer heads", ALL_NAIVE, B), ("fused all-layer heads", ALL_FUSED, B),
                             ("fused all-layer heads", ALL_FUSED, shape["B"])):
            got = self.peak_bytes(dict(shape, B=b), ov)
            pred = memory_model.estimate(dict(shape, B=b), ov, self.dtype, device=self.dev)["peak"]
            ok &= abs(pred / got - 1) <= 0.15
            parts.append((label, b, got, pred))
        naive, fused = parts[0][2], parts[1][2]
        ok &= fused < naive
        text = "; ".join(f"{lab} B={b}: {got / 2**20:,.0f} MiB (model {pred / 2**20:,.0f} MiB, "
                         f"{pred / got:.2f}x)" for lab, b, got, pred in parts)
        return ok, f"fused / naive = {fused / naive:.2f}; {text} (model bound 15 %)"

    def peak_bytes(self, shape, overrides):
        """max_memory_allocated of a worker's steps (CUDA) or the profiled CPU peak."""
        if self.dev == "cuda":
            spec = dict(device="cuda", shape=shape, overrides=overrides, dtype=self.dtype,
                        stat="median", compile=False, warmup=1, steps=2, threads=0)
            r = bench.launch("gpu-check", spec, self.cfg["timeout"])
            if r["status"] != "ok":
                raise RuntimeError(f"{r['status']}: {r.get('error', '')}")
            return r["peak_alloc_mb"] * 2 ** 20
        return memory_model.measure(shape, overrides, self.dtype)

    def mfu(self):
        info = bench.device_info(self.dev)
        peak, src = bench.peak_flops(self.dev, info, self.dtype)
        out, ok = [], True
        for label, ov in (("plain GPT-2", PLAIN), ("shared early-exit", EARLY)):
            r = self.case(ov, compile=True)
            mfu = r["tflops"] * 1e12 / peak
            ok &= 0.0 < mfu <= 1.0
            out.append(f"{label} {mfu:.3f} ({r['tok_per_s']:,.0f} tok/s, "
                       f"{r['flops_per_token'] / 1e9:.3g} GFLOP/token)")
        return ok, "MFU " + "; ".join(out) + f" against {peak / 1e12:.3g} TFLOP/s ({src})"

    def torchrun(self):
        cfg, work = self.cfg, self.work
        nproc = _gpu_count() if self.dev == "cuda" else 1
        data = os.path.join(work, "builtin")
        if not os.path.isfile(os.path.join(data, fineweb.MANIFEST)):
            with contextlib.redirect_stdout(io.StringIO()):    # its per-shard lines
                rc = fineweb.main(["--source", "builtin", "--out", data, "--max-chars",
                                   str(cfg["corpus_chars"]), "--quiet"])
            if rc not in (0, None):
                return False, f"fineweb.py --source builtin failed (rc {rc})"
        steps = cfg["train_steps"]
        B = int(next(a for a in cfg["train_args"] if a.startswith("--B=")).split("=")[1])
        T = int(next(a for a in cfg["train_args"] if a.startswith("--T=")).split("=")[1])
        common = ["--dataset=" + data, "--log_dir=" + os.path.join(work, "log"),
                  "--run_name=gpu-check", f"--total_batch_size={B * T * nproc}",
                  f"--warmup_steps={min(10, steps // 2)}", f"--eval_interval={steps // 2}", "--eval_iters=2",
                  f"--sample_interval={steps // 2}", f"--checkpoint_interval={steps // 2}",
                  ] + cfg["train_args"]

        def run(max_steps, extra):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={nproc}", os.path.join(ROOT, "train_gpt2.py"),
                   os.path.join(ROOT, "config", "4-test.py"), f"--max_steps={max_steps}"] + common + extra
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=cfg["timeout"])
            if p.returncode != 0:
                tail = (p.stderr or p.stdout).strip().splitlines()
                raise RuntimeError(f"torchrun rc {p.returncode}: {tail[-1] if tail else ''}")

        run(steps, [])
        log = os.path.join(work, "log", "gpu-check.txt")
        lines = open(log).read().splitlines()
        train = [ln for ln in lines if re.match(r"^@ \d+ train ", ln)]
        bad = [ln for ln in train if not TRAIN_LINE.match(ln)]
        with open(os.path.join(work, "log", "gpu-check.jsonl")) as f:   # full-precision losses
            losses = [e["loss"] for e in map(json.loads, f) if e.get("event") == "train"]
        k = max(1, len(losses) // 10)
        first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
        ckpts = sorted(glob.glob(os.path.join(work, "log", "gpu-check", "ckpt_*.pt")))
        import checkpoint
        m = checkpoint.load_model(ckpts[-1])[0] if ckpts else None
        run(steps + cfg["resume_steps"], ["--resume=auto"])
        resumed = [int(m_.group(1)) for m_ in map(TRAIN_LINE.match, open(log).read().splitlines())
                   if m_ and int(m_.group(1)) >= steps]
        ok = (len(train) == steps and not bad and last < first and m is not None
              and resumed == list(range(steps, steps + cfg["resume_steps"])))
        return ok, (f"{nproc} process(es), {len(train)} train lines ({len(bad)} malformed), "
                    f"loss {first:.4g} -> {last:.4g} (mean of first/last {k}), "
                    f"checkpoint {os.path.basename(ckpts[-1]) if ckpts else 'missing'} "
                    f"{'loads' if m is not None else 'does not load'}, resume logged steps "
                    f"{resumed[:1] + resumed[-1:] if resumed else 'none'}")


def _max_rel(a, b):
    if len(a) != len(b) or not a:
        raise RuntimeError(f"loss lists differ in length ({len(a)} vs {len(b)})")
    return max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b))


def _gpu_count():
    import torch
    return torch.cuda.device_count()


def render(dev, info, rows, command, dry_run):
    n_ok = sum(ok for _, ok, _ in rows)
    gpus = f"{_gpu_count()} x {info['name']}" if dev == "cuda" else f"CPU {info['name']} (dry run)"
    lines = [f"# GPU check {'(dry run on CPU)' if dry_run else ''}".rstrip(), "",
             f"`{command}`  ",
             f"{datetime.datetime.now().isoformat(timespec='seconds')}, git {bench.git_version()}, "
             f"torch {info['torch']}" + (f", CUDA {info.get('cuda')}" if dev == "cuda" else ""),
             f"device: {gpus}", "",
             f"**{n_ok}/{len(rows)} PASS**", "", "| item | result | details |", "|---|---|---|"]
    lines += [f"| {name} | {'PASS' if ok else 'FAIL'} | {detail} |" for name, ok, detail in rows]
    return "\n".join(lines) + "\n"


ITEMS = ("compile", "bf16", "memory", "mfu", "torchrun")


def main(argv=None):
    ap = argparse.ArgumentParser(description="The GPU check (bench.py --gpu-check): PASS/FAIL "
                                 "per item, report in <out>/<gpu>-<date>.md")
    ap.add_argument("--dry-run", action="store_true",
                    help="run every item on CPU at a tiny shape (proves the plumbing, not the GPU)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--items", default=",".join(ITEMS), help=f"comma-separated subset of {','.join(ITEMS)}")
    args = ap.parse_args(argv)
    items = [s.strip() for s in args.items.split(",") if s.strip()]
    unknown = [s for s in items if s not in ITEMS]
    if unknown or not items:
        print(f"error: unknown item(s) {unknown}; known: {', '.join(ITEMS)}", file=sys.stderr)
        return 2
    import torch
    if not args.dry_run and not torch.cuda.is_available():
        print("error: --gpu-check needs CUDA and torch.cuda.is_available() is False "
              "(--dry-run runs the same items on CPU)", file=sys.stderr)
        return 2
    dev = "cpu" if args.dry_run else "cuda"
    info = bench.device_info(dev)
    print(f"device: {dev} — {info['name']}" + (f" x {_gpu_count()}" if dev == "cuda" else " (dry run)"),
          flush=True)
    work = tempfile.mkdtemp(prefix="gpu-check-")
    try:
        chk = Check(dev, DRY if args.dry_run else GPU, work)
        for name in items:
            chk.item(name, getattr(chk, name))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = "python bench.py --gpu-check" + (" --dry-run" if args.dry_run else "") + \
        (f" --items {args.items}" if items != list(ITEMS) else "")
    name = ("cpu-dry-run" if args.dry_run else bench.slug(info["name"])) + \
        f"-{datetime.date.today().isoformat()}.md"
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, name)
    fineweb.write_text_atomic(path, render(dev, info, chk.rows, command, args.dry_run))
    n_ok = sum(ok for _, ok, _ in chk.rows)
    rel = os.path.relpath(path)
    print(f"{n_ok}/{len(chk.rows)} PASS; wrote {path if rel.startswith('..') else rel}")
    return 0 if n_ok == len(chk.rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
