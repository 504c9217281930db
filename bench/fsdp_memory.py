"""Per-rank parameter + gradient + AdamW memory of DDP vs FSDP2, measured on the live tensors.

    python bench/fsdp_memory.py                       # 2 and 4 gloo ranks, unshared 24 x 256
    python bench/fsdp_memory.py --ranks 2 --n_layer 12 --n_embd 128

For each world size N it launches `torchrun --nproc_per_node=N` of this file (--worker), which
builds the model, wraps it (DDP, then a fresh copy with FSDP as train_gpt2.py's
parallel=fsdp does), runs one AdamW step and sums the bytes of the distinct storages this rank
holds for parameters, gradients and optimizer state (its shards under FSDP, padding included).
Then it states the expected per-GPU memory of GPT-2 124M / 350M / 774M from the same accounting.
Writes bench/results/fsdp-memory-<date>.md (+ .json) and prints the table.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GPT2_SIZES = {"GPT-2 124M": (12, 768, 12), "GPT-2 350M": (24, 1024, 16),
              "GPT-2 774M": (36, 1280, 20)}     # (n_layer, n_embd, n_head)


def rank_bytes(model, optimizer):
    """Bytes of the distinct storages this rank holds: parameters, gradients, AdamW state
    (0-dim step counters left out)."""
    import distributed
    seen, out = set(), {"params": 0, "grads": 0, "optimizer": 0}

    def add(kind, t):
        t = distributed.local(t)
        st = t.untyped_storage()
        if t.dim() == 0 or st.data_ptr() in seen:
            return
        seen.add(st.data_ptr())
        out[kind] += st.nbytes()
    for p in model.parameters():
        add("params", p)
        if p.grad is not None:
            add("grads", p.grad)
    for st in optimizer.state.values():
        for v in st.values():
            if hasattr(v, "dim"):
                add("optimizer", v)
    out["param_opt_bytes"] = out["params"] + out["grads"] + out["optimizer"]
    return out


def worker(args):
    """Under torchrun: DDP then FSDP on one model shape -> rank 0 writes --out (JSON)."""
    import torch
    import torch.distributed as dist

    import distributed
    from model import GPT, GPTConfig
    d = distributed.DistContext()
    d.init("cpu")
    cfg = GPTConfig(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                    vocab_size=args.vocab_size, block_size=64, share_weights=False)
    res = {"world": d.world, "n_layer": args.n_layer, "n_embd": args.n_embd,
           "vocab_size": args.vocab_size}
    for mode in ("ddp", "fsdp"):
        torch.manual_seed(0)
        raw = GPT(cfg)
        res["n_params"] = raw.get_num_params(non_embedding=False)
        model = distributed.wrap(raw, mode, d, "cpu", "float32")
        opt = raw.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
        x = torch.randint(0, cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(d.rank))
        _, loss = model(x, x)
        loss.backward()
        opt.step()
        mine = rank_bytes(raw, opt)
        peak = max(d.gather_object(mine["param_opt_bytes"]))
        res[mode] = dict(mine, param_opt_bytes=peak)     # the largest rank's
        del model, raw, opt
    if d.master:
        with open(args.out, "w") as f:
            json.dump(res, f)
    dist.barrier()
    d.destroy()


def expected_gb(n_layer, n_embd, n_head, vocab=50304, world=8):
    """(DDP, FSDP) expected per-GPU bytes of params + grads + AdamW (fp32, 16 B/param) at this
    shape, FSDP adding the whole parameters (bf16) and fp32 grads of the one block unit being
    computed. Activations are the same in both modes and not included."""
    from model import GPT, GPTConfig
    import torch
    with torch.device("meta"):
        m = GPT(GPTConfig(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab))
    n = m.get_num_params(non_embedding=False)
    block = sum(p.numel() for p in m.transformer.h[0].parameters())
    root = n - n_layer * block
    ddp = 16 * n
    fsdp = 16 * n / world + (2 + 4) * (block + root)
    return n, ddp / 2**30, fsdp / 2**30


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", default="2,4", help="comma-separated world sizes (default 2,4)")
    ap.add_argument("--n_layer", type=int, default=24)
    ap.add_argument("--n_embd", type=int, default=256)
    ap.add_argument("--n_head", type=int, default=4)
    ap.add_argument("--vocab_size", type=int, default=4096)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help="worker: JSON path; else the results directory")
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    try:
        ranks = [int(r) for r in args.ranks.split(",")]
        if any(r < 1 for r in ranks):
            raise ValueError
    except ValueError:
        print(f"error: --ranks must be comma-separated positive integers, got {args.ranks!r}",
              file=sys.stderr)
        return 2
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rows = []
    for n in ranks:
        out = os.path.join(ROOT, "bench", "results", f".fsdp-memory-{n}.json.tmp")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={n}", os.path.abspath(__file__), "--worker", "--out", out,
               f"--n_layer={args.n_layer}", f"--n_embd={args.n_embd}",
               f"--n_head={args.n_head}", f"--vocab_size={args.vocab_size}"]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode:
            print(p.stderr[-2000:], file=sys.stderr)
            print(f"error: worker with {n} ranks failed (rc {p.returncode})", file=sys.stderr)
            return 1
        with open(out) as f:
            rows.append(json.load(f))
        os.remove(out)
    date = datetime.date.today().isoformat()
    lines = [f"# FSDP2 vs DDP: per-rank parameter + gradient + AdamW memory ({date})", "",
             f"Measured with `python bench/fsdp_memory.py --ranks {args.ranks}` on "
             f"{platform.processor() or platform.machine()} (CPU, gloo): unshared "
             f"{args.n_layer} x {args.n_embd} GPT, vocab {args.vocab_size}; the bytes of the "
             f"distinct storages the largest rank holds after one AdamW step.", "",
             "| ranks | params | DDP MiB/rank | FSDP MiB/rank | FSDP / DDP | bound 1.2/N |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r["ddp"]["param_opt_bytes"], r["fsdp"]["param_opt_bytes"]
        lines.append(f"| {r['world']} | {r['n_params']:,} | {a / 2**20:.1f} | {b / 2**20:.1f} | "
                     f"{b / a:.3f} | {1.2 / r['world']:.3f} |")
    lines += ["", "Expected per-GPU params + grads + AdamW on 8 GPUs (fp32 master weights, "
              "16 B/param; FSDP adds the bf16 parameters and fp32 gradients of the one unit "
              "being computed; activations are equal in both modes and not included):", "",
              "| model | params | DDP GiB/GPU | FSDP GiB/GPU (8 ranks) |", "|---|---|---|---|"]
    for name, (L, C, H) in GPT2_SIZES.items():
        n, ddp, fsdp = expected_gb(L, C, H)
        lines.append(f"| {name} | {n / 1e6:.0f}M | {ddp:.2f} | {fsdp:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out_dir = args.out or os.path.join(ROOT, "bench", "results")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"fsdp-memory-{date}.md")
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    with open(path[:-3] + ".json.tmp", "w") as f:
        json.dump(rows, f, indent=1)
    os.replace(path[:-3] + ".json.tmp", path[:-3] + ".json")
    print(f"wrote {os.path.relpath(path, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
