"""Checkpoint files of a run: log/{run}/ckpt_{step:06d}.pt, written atomically, verified on load.

    path = save(obj, ckpt_dir, step, keep=3)     # atomic write + content digest, prune old ones
    ck = load(path)                              # dict, or CheckpointError naming the damage
    model, ck = load_model(path)                 # GPT in eval mode (eval_exit.py, hellaswag.py)
    ck, path, damaged = find_resume(ckpt_dir, "auto", model_config)   # --resume
    ck, path = resume_for_run(cfg, ckpt_dir, mcfg, master, notes)     # the trainer's, + notes

A checkpoint is a dict with at least CKPT_KEYS; "digest" (blake2b over every tensor's bytes and
every other value) catches the flipped bit inside tensor data that torch.load does not notice.
Model state dict keys are stored without DDP's `module.` / torch.compile's `_orig_mod.` parts.
"""
import dataclasses
import hashlib
import os
import random
import re
import sys
import time

import numpy as np
import torch

import fineweb

CKPT_RE = re.compile(r"^ckpt_(\d{6,})\.pt$")
CKPT_TMP_RE = re.compile(r"^\.ckpt_\d{6,}\.pt\.\d+\.tmp$")     # atomic_save's temp files
CKPT_KEYS = ("model", "model_config", "train_config", "step", "optimizer", "loader", "rng")


class CheckpointError(ValueError):
    """A missing, truncated, corrupted or foreign checkpoint: one-line message."""


def path_for(ckpt_dir, step):
    return os.path.join(ckpt_dir, f"ckpt_{step:06d}.pt")


def list_checkpoints(ckpt_dir):
    """[(step, path)] sorted by step."""
    if not os.path.isdir(ckpt_dir):
        return []
    out = []
    for name in os.listdir(ckpt_dir):
        m = CKPT_RE.match(name)
        if m:
            out.append((int(m.group(1)), os.path.join(ckpt_dir, name)))
    return sorted(out)


def digest(obj):
    """blake2b hex digest of a checkpoint's content (every tensor's dtype, shape and bytes, every
    other value's repr, dict keys in sorted order), without its own "digest" entry."""
    h = hashlib.blake2b(digest_size=32)

    def walk(o):
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(o, dict):
            h.update(b"{")
            for k in sorted(o, key=str):
                if k == "digest" and o is obj:
                    continue
                h.update(repr(k).encode())
                walk(o[k])
            h.update(b"}")
        elif isinstance(o, (list, tuple)):
            h.update(b"[")
            for v in o:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(o).encode())
    walk(obj)
    return h.hexdigest()


def strip_prefixes(state_dict):
    """Model state dict keys without DDP's `module.` and torch.compile's `_orig_mod.` parts."""
    out = {}
    for k, v in state_dict.items():
        for pre in ("module.", "_orig_mod."):
            k = k[len(pre):] if k.startswith(pre) else k
        out[k.replace("._orig_mod.", ".")] = v
    return out


def load(path):
    """The verified checkpoint dict; CheckpointError(reason) when missing/truncated/corrupted."""
    if not os.path.isfile(path):
        raise CheckpointError("no such file")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, ...
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise CheckpointError(f"{type(e).__name__}: {first}") from None
    if not isinstance(ck, dict) or any(k not in ck for k in CKPT_KEYS):
        raise CheckpointError("not a train_gpt2.py checkpoint (keys missing)")
    if "digest" in ck and ck["digest"] != digest(ck):
        raise CheckpointError("content digest mismatch (corrupted data)")
    return ck


def load_model(path):
    """(GPT in eval mode on CPU, checkpoint dict) from a verified checkpoint; CheckpointError
    with "checkpoint {path} is unreadable (...)" otherwise."""
    from model import GPT, GPTConfig
    try:
        ck = load(path)
        model = GPT(GPTConfig(**ck["model_config"]))
        model.load_state_dict(strip_prefixes(ck["model"]))
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({e})") from None
    except (TypeError, ValueError, RuntimeError) as e:    # config/weights of another code version
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"checkpoint {path} does not fit this model.py "
                              f"({type(e).__name__}: {first})") from None
    return model.eval(), ck


class _KeepWriteError:
    """The file torch.save writes through, remembering the OSError of a failed write: torch
    reports it (ENOSPC, EFBIG) as RuntimeError("... unexpected pos ..."), without the errno."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, b):
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        self.f.flush()


def atomic_save(obj, path):
    """torch.save to a temp file in the same directory, fsync, os.replace, fsync the directory.
    A failed write raises its OSError (disk full: errno ENOSPC); the temp file is removed."""
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            out = _KeepWriteError(f)
            try:
                torch.save(obj, out)
            except RuntimeError:
                if out.error is None:
                    raise
                raise out.error from None
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fineweb.fsync_dir(d)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save(obj, ckpt_dir, step, keep):
    """Add the digest, write ckpt_{step}.pt atomically, delete all but the newest `keep`
    checkpoints -> path. OSError when the write failed (older checkpoints untouched)."""
    path = path_for(ckpt_dir, step)
    obj["digest"] = digest(obj)
    atomic_save(obj, path)
    for _, old in list_checkpoints(ckpt_dir)[:-keep]:
        try:
            os.remove(old)
        except OSError:
            pass
    return path


def _move_aside(paths, dest):
    """Move files into the new directory dest (a numbered suffix if it exists) -> its path."""
    base, n = dest, 1
    while os.path.exists(dest):
        n += 1
        dest = f"{base}-{n}"
    os.makedirs(dest)
    for p in paths:
        os.replace(p, os.path.join(dest, os.path.basename(p)))
    return dest


def backup_previous(paths, ckpt_dir):
    """A fresh start over an earlier run of the same name: its files (paths: log, jsonl) and
    checkpoints move to {ckpt_dir}/prev/{time of the move}/ (earlier runs moved there before
    stay) so resume=auto never picks them -> a note for the log, or None when there was nothing
    to move."""
    old = [p for p in paths if os.path.exists(p)] + [p for _, p in list_checkpoints(ckpt_dir)]
    if not old:
        return None
    dest = _move_aside(old, os.path.join(ckpt_dir, "prev", time.strftime("%Y%m%d-%H%M%S")))
    return f"an earlier run's files ({len(old)}) were moved to {dest}"


def set_aside_later(ckpt_dir, step):
    """Resuming from step `step` when later checkpoints exist (a rollback): they belong to the
    abandoned branch and move to {ckpt_dir}/abandoned/{time}-after-{step}/, so that pruning and
    resume=auto only see the resumed branch -> a note for the log, or None."""
    later = [p for s, p in list_checkpoints(ckpt_dir) if s > step]
    if not later:
        return None
    dest = _move_aside(later, os.path.join(ckpt_dir, "abandoned",
                                           f"{time.strftime('%Y%m%d-%H%M%S')}-after-{step:06d}"))
    return (f"resumed from step {step} with {len(later)} later checkpoint(s) of an abandoned "
            f"branch: moved to {dest}")


def remove_stale_temps(ckpt_dir):
    """Delete the temp files of checkpoint writes that were killed part-way -> their names."""
    gone = []
    if os.path.isdir(ckpt_dir):
        for name in sorted(os.listdir(ckpt_dir)):
            if CKPT_TMP_RE.match(name):
                try:
                    os.remove(os.path.join(ckpt_dir, name))
                    gone.append(name)
                except OSError:
                    pass
    return gone


def config_diff(a, b):
    """[(key, a value, b value)] of the keys where two config dicts differ, sorted."""
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def find_resume(ckpt_dir, resume, model_config):
    """The checkpoint to resume from -> (ckpt dict or None, its path or None, damaged).

    resume: "auto" (the newest valid checkpoint in ckpt_dir; damaged ones are skipped and listed
    in `damaged` as "checkpoint {path} is unreadable (why)") or a path (must be valid).
    CheckpointError when that path is bad or the checkpoint's model config differs from
    `model_config` (a GPTConfig)."""
    if resume == "auto":
        cands = [p for _, p in list_checkpoints(ckpt_dir)[::-1]]
    elif not os.path.isfile(resume):
        raise CheckpointError(f"resume checkpoint not found: {resume}")
    else:
        cands = [resume]
    damaged = []
    for path in cands:
        try:
            ck = load(path)
        except CheckpointError as e:
            msg = f"checkpoint {path} is unreadable ({e})"
            if resume != "auto":
                raise CheckpointError(msg) from None
            damaged.append(msg)
            continue
        diff = config_diff(ck["model_config"], dataclasses.asdict(model_config))
        if diff:
            what = ", ".join(f"{k} {a!r} (checkpoint) vs {b!r} (this run)" for k, a, b in diff)
            raise CheckpointError(f"checkpoint {path} has a different model config: {what}")
        return ck, path, damaged
    return None, None, damaged


def resume_for_run(cfg, ckpt_dir, mcfg, master, notes):
    """The trainer's checkpoint to continue from -> (dict, path) or (None, None); cfg["resume"]
    set to "auto" in a group torchrun --max-restarts restarted; notes appended (damaged
    checkpoints skipped, a fresh start), a warning on stderr (master). CheckpointError as
    find_resume."""
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if cfg["resume"] is None and restarts > 0 and not cfg["lr_find"]:
        cfg["resume"] = "auto"
        notes.append(f"torchrun restart {restarts}: resume=auto")
    if cfg["resume"] is None or cfg["lr_find"]:
        return None, None
    ck, path, damaged = find_resume(ckpt_dir, cfg["resume"], mcfg)
    for msg in damaged:
        notes.append(msg + "; trying the previous one")
        if master:
            print(f"warning: {msg}; trying the previous one", file=sys.stderr, flush=True)
    if ck is None:
        notes.append(f"resume=auto: no {'valid ' if damaged else ''}checkpoint in {ckpt_dir}; "
                     f"starting fresh")
    return ck, path


def check_continues(ck, ck_path, meta, train_loader):
    """CheckpointError when the dataset (manifest meta, its train DataLoader) cannot continue
    the checkpoint's run: another vocabulary (tokenizer, the characters behind char ids, size)
    or a data position it does not have."""
    why = fineweb.vocabulary_mismatch(meta, ck.get("tokenizer"))
    if why:
        raise CheckpointError(f"dataset {meta['data_dir']} has {why}: checkpoint {ck_path} was "
                              f"trained on another vocabulary")
    for key in ("loader", "loader_batch_start"):
        if key in ck:
            try:
                train_loader.check_state(ck[key])
            except ValueError as e:
                raise CheckpointError(f"checkpoint {ck_path} cannot continue on dataset "
                                      f"{meta['data_dir']}: {e}") from None


# ----------------------------------------------------------------------------------------------
# RNG states (saved per rank so that a resumed run draws the same dropout masks)

def rng_state(device_type):
    np_state, py_state = np.random.get_state(), random.getstate()
    st = {"torch": torch.get_rng_state(),
          "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                    int(np_state[3]), float(np_state[4])],
          "python": [py_state[0], list(py_state[1]), py_state[2]]}
    if device_type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def set_rng_state(st, device_type):
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = st["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if device_type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"])
