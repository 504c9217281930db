"""The run log: log/{run}.txt in the journal's line formats (+ stdout) and its jsonl twin.

    log = RunLog(txt_path, jsonl_path, master=True, append=False)
    log = open_for_run(log_dir, run_name, master, ckpt_dir, ck, notes)   # the trainer's
    log.line(format_train_line(step, r, batch_reuse))   # "@ 5 train 3.0469 , allloss: ..."
    log.note("checkpoint saved: ...")                   # "# ..." comment lines
    log.event("train", step=5, loss=3.05)               # one JSON object per line

Only rank 0 writes (master=False makes every call a no-op); every line is flushed. The header
(write_header) records the command, git commit, package versions, device, data, model and the
resolved config, as modded-nanogpt's logs do.
"""
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np
import torch

import checkpoint

ROOT = os.path.dirname(os.path.abspath(__file__))
# data-sheet dense bf16 peak FLOP/s by device-name substring, first match wins (for MFU)
PEAK_BF16_FLOPS = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12),
                   ("L40S", 362e12), ("L4", 121e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12)]


def peak_bf16_flops(device_name):
    """(name key, dense bf16 FLOP/s) of a known GPU from its torch device name, else None."""
    return next(((k, v) for k, v in PEAK_BF16_FLOPS if k in device_name), None)


def throughput(flops_per_token, tokens, world, dt, peak_flops=None):
    """One optimizer step of `tokens` tokens over `world` ranks in dt seconds -> {tok_sec (all
    ranks), tflops (model TFLOP/s per rank), mfu (tflops / the GPU's peak; None without one)}."""
    tflops = flops_per_token * tokens / world / dt / 1e12
    return {"tok_sec": tokens / dt, "tflops": tflops,
            "mfu": tflops * 1e12 / peak_flops if peak_flops else None}


class RunLog:
    """Text log (stdout + txt_path) and the jsonl twin; rank 0 only, flushed every line."""

    def __init__(self, txt_path, jsonl_path, master, append):
        self.master = master
        self.tracker = None      # tracking.WandbTracker or None: receives every event
        self.txt = self.jsonl = None
        self.txt_path, self.jsonl_path = txt_path, jsonl_path
        if master:
            os.makedirs(os.path.dirname(txt_path) or ".", exist_ok=True)
            mode = "a" if append else "w"
            self.txt = open(txt_path, mode, encoding="utf-8")
            self.jsonl = open(jsonl_path, mode, encoding="utf-8")

    def line(self, s):
        if not self.master:
            return
        print(s, flush=True)
        self.txt.write(s + "\n")
        self.txt.flush()

    def note(self, s):
        self.line("# " + s)

    def event(self, kind, **data):
        if not self.master:
            return
        data = {"event": kind, "time": round(time.time(), 3), **data}
        line = json.dumps(data, default=_json_default, allow_nan=True)
        self.jsonl.write(line + "\n")
        self.jsonl.flush()
        if self.tracker is not None:
            self.tracker.log(json.loads(line))

    def close(self):
        if self.tracker is not None:
            self.tracker.finish()
            self.tracker = None
        for f in (self.txt, self.jsonl):
            if f is not None:
                try:
                    f.close()
                except OSError:   # flushing into a full disk: the error was reported already
                    pass
        self.txt = self.jsonl = None


def open_for_run(log_dir, name, master, ckpt_dir, ck, notes, checkpoints=True):
    """RunLog of {log_dir}/{name}(.txt|.jsonl), appending when resuming from the checkpoint ck;
    called once every check has passed. With checkpoints (rank 0): partial checkpoint writes of
    a killed run are removed, a fresh start moves an earlier run's log and checkpoints aside, a
    resume the checkpoints after its own (checkpoint.py); notes appended for the log."""
    resumed = ck is not None
    txt, jsl = (os.path.join(log_dir, name + ext) for ext in (".txt", ".jsonl"))
    os.makedirs(log_dir, exist_ok=True)
    if master and checkpoints:
        stale = checkpoint.remove_stale_temps(ckpt_dir)
        if stale:
            notes.append(f"removed {len(stale)} partial checkpoint write(s) of a killed run: "
                         f"{', '.join(stale)}")
        if not resumed:
            notes += filter(None, [checkpoint.backup_previous((txt, jsl), ckpt_dir)])
        else:
            notes += filter(None, [checkpoint.set_aside_later(ckpt_dir, int(ck["step"]))])
    return RunLog(txt, jsl, master, append=resumed)


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, (np.generic,)):
        return o.item()
    return str(o)


def format_train_line(step, r, batch_reuse, skipped=None):
    """The journal's train line (train_gpt2.py's docstring lists the fields)."""
    esd = [round(float(v), 3) for v in r["earlystopdict"]]
    s = (f"@ {step} train {r['loss']:.4f} , allloss: {r['allloss']:.4f}, "
         f"confloss: {r['confloss']:.4f}, targetloss: {r['targetloss']:.4f}, "
         f"earlystop: {r['earlystop']:.3f}, earlystopdict: {esd}, lr:{r['lr']:.4e}, "
         f"norm:{r['norm']:.4f}, dt: {r['dt'] * 1000:.2f}ms, tok/sec: {r['tok_sec']:.2f}, "
         f"flops:{r['tflops']:.2f}, batch-reuse:{batch_reuse}")
    if skipped:
        s += f", skipped:{skipped}"
    return s


def format_size_lines(residual_std):
    """n_layer lines `SIZE COMPARISON prev {} mid {} next {}` (full float repr, as the journal)."""
    return [f"SIZE COMPARISON prev {float(p)!r} mid {float(m)!r} next {float(n)!r}"
            for p, m, n in residual_std]


def git_state(root=ROOT):
    """(commit or None, dirty bool or None, list of changed tracked files)."""
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=20)
        status = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None, None, []
    if status.returncode != 0:
        return None, None, []
    changed = [l[3:] for l in status.stdout.splitlines() if l.strip()]
    sha = commit.stdout.strip() if commit.returncode == 0 else None
    return sha, bool(changed), changed


def versions():
    """{package: version or None} of the packages a run's numbers depend on."""
    from importlib import metadata
    out = {}
    for p in ("torch", "numpy", "tiktoken", "datasets", "matplotlib"):
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def peak_memory(device):
    """Peak bytes: CUDA max_memory_allocated, else the process's peak RSS (None if unknown)."""
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated(device)
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except Exception:
        return None


def device_names(device_type):
    return ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if device_type == "cuda" else [device_type])


def write_header(log, *, cfg, resolved, argv, resumed_from, device, device_type, world, dtype,
                 compile, meta, model, model_config, grad_accum):
    """The `#` header lines and the jsonl "header" event of one invocation (rank 0)."""
    if not log.master:
        return
    sha, dirty, _ = git_state()
    v = versions()
    names = device_names(device_type)
    tr = sum(s["tokens"] for s in meta["shards"] if s["split"] == "train")
    va = sum(s["tokens"] for s in meta["shards"] if s["split"] == "val")
    log.note(f"==== run {cfg['run_name']} {'resumed' if resumed_from else 'started'} "
             f"{time.strftime('%Y-%m-%d %H:%M:%S')} ====")
    log.note("command: " + " ".join(shlex.quote(a) for a in [os.path.basename(sys.argv[0])] + argv))
    log.note(f"git: {sha or 'unknown'} (dirty: {dirty})")
    log.note(f"torch {torch.__version__}, cuda {torch.version.cuda}, devices: {', '.join(names)}; "
             f"device {device}, world_size {world}, dtype {dtype}, compile {compile}")
    log.note("packages: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    log.note(f"data: {meta['data_dir']} ({meta['tokenizer']} tokenizer, vocab "
             f"{meta['vocab_size']}; train {tr} tokens, val {va} tokens)")
    log.note(f"model: {model.get_num_params():,} params ({model.num_unique_block_params():,} in "
             f"stored blocks), {model.flops_per_token(cfg['T']):.4g} training FLOPs/token")
    log.note(model.config.exit_heads_mode())
    log.note(f"batch: total_batch_size {cfg['total_batch_size']} = B {cfg['B']} x T {cfg['T']} "
             f"x grad_accum {grad_accum} x world_size {world}")
    log.note("config: " + json.dumps(resolved, sort_keys=True))
    log.event("header", config=resolved, model_config=model_config, git_commit=sha,
              git_dirty=dirty, versions=v, devices=names, world_size=world,
              cuda=torch.version.cuda, grad_accum=grad_accum, params=model.get_num_params(),
              resumed_from=resumed_from)
