"""Fault injection: every fault a days-long run meets, injected on CPU with tiny configs.

kill -9 (one process; one rank of a 2-process gloo run; under torchrun --max-restarts),
checkpoint writes interrupted at any byte, corrupted checkpoints, SIGTERM/SIGINT, non-finite
loss/gradient, residual blow-up, disk full for a checkpoint and for a data shard. After each, the
run continues (or stops with a message) and the losses equal those of an uninterrupted run.
A summary line "fault injection: N faults injected, M survived" ends the pytest output.
"""
import errno
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import faultlog
from conftest import (ROOT, TRAIN, flip_bit_in_largest_tensor, parse_train_lines, popen_train,
                      read_jsonl, run_train, tiny_args, torchrun_cmd, train_events, trainer_env)
import checkpoint
import train_gpt2 as tg

# a run long enough to be killed part-way (~10 ms a step), checkpoints every 4 steps
LONG = ["--max_steps=150", "--warmup_steps=10", "--eval_interval=50", "--size_interval=0",
        "--sample_interval=0", "--checkpoint_interval=4", "--keep_checkpoints=2", "--dropout=0.1",
        "--shuffle=True"]
SHORT = ["--max_steps=12", "--eval_interval=0", "--size_interval=0", "--sample_interval=0",
         "--checkpoint_interval=4"]


def _ok(p):
    assert p.returncode == 0, f"rc={p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}"


def _popen(args, nproc=None, extra=()):
    """The trainer running in the background: one process (forked by tests/prefork.py), or
    torchrun with nproc workers."""
    if not nproc:
        return popen_train(args, env=trainer_env())
    return subprocess.Popen(torchrun_cmd(nproc, *extra) + [TRAIN] + list(args), cwd=ROOT,
                            env=trainer_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _last_step(jsonl):
    """Step of the newest train event in a jsonl that is being written (-1 when none yet)."""
    try:
        with open(jsonl) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return -1
    for line in reversed(lines):
        try:
            e = json.loads(line)
        except ValueError:           # a line being written
            continue
        if e.get("event") == "train":
            return e["step"]
    return -1


def _wait_for_step(proc, jsonl, step, timeout=180):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if _last_step(jsonl) >= step:
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended (rc {proc.returncode}) before step {step}:\n{err[-2000:]}")
        time.sleep(0.005)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def _worker_pid(parent, rank):
    """pid of the torchrun worker with RANK=rank among parent's descendants (Linux /proc)."""
    kids = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(p))
    todo, seen = [parent], []
    while todo:
        pid = todo.pop()
        for k in kids.get(pid, []):
            seen.append(k)
            todo.append(k)
    for pid in seen:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if env.get(b"RANK") == str(rank).encode() and env.get(b"LOCAL_RANK") is not None:
            return pid
    raise AssertionError(f"no worker with RANK={rank} under pid {parent}")


def _losses_by_step(jsonl):
    """{step: [loss, ...]} (a step logged twice: before a kill and again after resuming)."""
    out = {}
    for e in train_events(jsonl):
        out.setdefault(e["step"], []).append(e["loss"])
    return out


def _assert_continues_exactly(ref_jsonl, run_jsonl, n_steps):
    ref, run = _losses_by_step(ref_jsonl), _losses_by_step(run_jsonl)
    assert sorted(run) == list(range(n_steps)), sorted(set(range(n_steps)) - set(run))
    bad = [(s, ref[s][0], v) for s in run for v in run[s] if v != ref[s][0]]
    assert not bad, f"(step, uninterrupted loss, loss here): {bad[:5]}"


@pytest.fixture(scope="module")
def reference(char_data, tmp_path_factory):
    """Uninterrupted single-process and 2-process runs of LONG: {nproc: jsonl path}."""
    d = tmp_path_factory.mktemp("ref")
    _ok(run_train(tiny_args(char_data, d / "one", "full", *LONG)))
    _ok(run_train(tiny_args(char_data, d / "two", "full", *LONG), nproc=2))
    return {1: d / "one" / "full.jsonl", 2: d / "two" / "full.jsonl"}


def _kill_step():
    """A random step to kill at (seeded by the clock; printed in the assertion messages)."""
    return random.Random(time.time_ns()).randrange(6, 60)


# ---------------------------------------------------------------------------------------------
# kill -9

@pytest.mark.slow
def test_kill9_single_process_then_resume_auto(char_data, tmp_path, reference):
    k = _kill_step()
    args = tiny_args(char_data, tmp_path, "run", *LONG)
    proc = _popen(args)
    _wait_for_step(proc, tmp_path / "run.jsonl", k)
    os.kill(proc.pid, signal.SIGKILL)
    faultlog.inject(f"kill -9 single process at step ~{k}")
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = _last_step(tmp_path / "run.jsonl")
    p = run_train(args + ["--resume=auto"])
    _ok(p)
    _assert_continues_exactly(reference[1], tmp_path / "run.jsonl", 150)
    text = (tmp_path / "run.txt").read_text()
    resumed = int(text.split("# resumed from ")[1].split(" at step ")[1].split()[0])
    assert killed_at - 4 <= resumed - 1 <= killed_at, (k, killed_at, resumed)
    assert not [n for n in os.listdir(tmp_path / "run") if n.endswith(".tmp")]
    faultlog.survived(f"kill -9 single process at step ~{k}")


@pytest.mark.slow
def test_kill9_one_rank_of_two_then_resume_auto(char_data, tmp_path, reference):
    k = _kill_step()
    args = tiny_args(char_data, tmp_path, "run", *LONG)
    proc = _popen(args, nproc=2)
    _wait_for_step(proc, tmp_path / "run.jsonl", k)
    os.kill(_worker_pid(proc.pid, 1), signal.SIGKILL)
    faultlog.inject(f"kill -9 rank 1 of 2 at step ~{k}")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "SIGKILL" in err or "Signal 9" in err or "-9" in err, err[-2000:]
    p = run_train(args + ["--resume=auto"], nproc=2)
    _ok(p)
    _assert_continues_exactly(reference[2], tmp_path / "run.jsonl", 150)
    assert "# resumed from " in (tmp_path / "run.txt").read_text()
    faultlog.survived(f"kill -9 rank 1 of 2 at step ~{k}")


@pytest.mark.slow
def test_torchrun_max_restarts_resumes_without_manual_step(char_data, tmp_path, reference):
    k = _kill_step()
    args = tiny_args(char_data, tmp_path, "run", *LONG)      # no --resume: the restart sets it
    proc = _popen(args, nproc=2, extra=["--max-restarts=1"])
    _wait_for_step(proc, tmp_path / "run.jsonl", k)
    os.kill(_worker_pid(proc.pid, 1), signal.SIGKILL)
    faultlog.inject(f"torchrun --max-restarts=1, rank 1 killed at step ~{k}")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    text = (tmp_path / "run.txt").read_text()
    assert "# torchrun restart 1: resume=auto" in text and "# resumed from " in text
    _assert_continues_exactly(reference[2], tmp_path / "run.jsonl", 150)
    faultlog.survived(f"torchrun --max-restarts=1, rank 1 killed at step ~{k}")


@pytest.mark.slow
def test_kill9_with_exit_sampling_resumes_exactly(char_data, tmp_path):
    """Cheap exits on (heads on sampled tokens and layers, dropout on): kill -9 at a random step,
    --resume=auto continues with the uninterrupted run's losses, bit for bit (the exit sample is
    a function of seed, step and micro step, so nothing about it is saved)."""
    sampled = ["--share_weights=True", "--n_layer=3", "--exit_loss=all-layers",
               "--exit_token_frac=0.25", "--exit_layer_frac=0.5", "--max_steps=40"]
    _ok(run_train(tiny_args(char_data, tmp_path / "ref", "full", *LONG, *sampled)))
    k = random.Random(time.time_ns()).randrange(6, 30)
    args = tiny_args(char_data, tmp_path, "run", *LONG, *sampled)
    proc = _popen(args)
    _wait_for_step(proc, tmp_path / "run.jsonl", k)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    _ok(run_train(args + ["--resume=auto"]))
    assert "# resumed from " in (tmp_path / "run.txt").read_text()
    _assert_continues_exactly(tmp_path / "ref" / "full.jsonl", tmp_path / "run.jsonl", 40)


# ---------------------------------------------------------------------------------------------
# checkpoint writes and corrupted checkpoints

def _ckpt_obj(step):
    g = torch.Generator().manual_seed(step)
    return {"model": {"w": torch.randn(64, 64, generator=g)}, "model_config": {}, "train_config": {},
            "step": step, "optimizer": {}, "loader": {}, "rng": []}


@pytest.mark.parametrize("how", ["error", "kill"])
def test_checkpoint_write_interrupted_at_any_byte(tmp_path, monkeypatch, how):
    """A write that fails (error) or dies (kill: the temp file stays) at byte n: ckpt_8 is never
    visible, ckpt_4 stays the latest and loads; a later run removes the temp file."""
    d = tmp_path / "run"
    checkpoint.atomic_save(_ckpt_obj(4), str(d / "ckpt_000004.pt"))
    import io
    buf = io.BytesIO()
    torch.save(_ckpt_obj(8), buf)
    full = buf.getvalue()
    rng = random.Random(0)
    cuts = sorted({0, 1, 2, 64, len(full) // 2, len(full) - 22, len(full) - 1}
                  | {rng.randrange(len(full)) for _ in range(8)})
    real_save = torch.save
    for n in cuts:
        faultlog.inject(f"checkpoint write {how} at byte {n}/{len(full)}")
        if how == "error":
            def partial(obj, f, n=n):
                f.write(full[:n])
                raise OSError(errno.EIO, "Input/output error")
            monkeypatch.setattr(torch, "save", partial)
            with pytest.raises(OSError):
                checkpoint.atomic_save(_ckpt_obj(8), str(d / "ckpt_000008.pt"))
            monkeypatch.setattr(torch, "save", real_save)
            assert sorted(os.listdir(d)) == ["ckpt_000004.pt"]      # temp file removed
        else:
            (d / f".ckpt_000008.pt.{4242 + n}.tmp").write_bytes(full[:n])
        latest = checkpoint.list_checkpoints(str(d))[-1]
        assert latest == (4, str(d / "ckpt_000004.pt"))
        assert checkpoint.load(latest[1])["step"] == 4
        faultlog.survived(f"checkpoint write {how} at byte {n}/{len(full)}")
    if how == "kill":
        assert checkpoint.remove_stale_temps(str(d)) == sorted(
            f".ckpt_000008.pt.{4242 + n}.tmp" for n in cuts)
        assert sorted(os.listdir(d)) == ["ckpt_000004.pt"]
    # a complete write is visible and loads
    checkpoint.atomic_save(_ckpt_obj(8), str(d / "ckpt_000008.pt"))
    assert checkpoint.load(str(d / "ckpt_000008.pt"))["step"] == 8


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "bit-flip", "partial-temp"])
def test_damaged_latest_checkpoint_resume_uses_previous(char_data, tmp_path, damage):
    _ok(run_train(tiny_args(char_data, tmp_path, "full", *SHORT)))
    _ok(run_train(tiny_args(char_data, tmp_path, "run", *SHORT, "--stop_at_step=9")))
    ck9 = tmp_path / "run" / "ckpt_000009.pt"
    if damage == "truncated":
        ck9.write_bytes(ck9.read_bytes()[:-1000])
    elif damage == "bit-flip":
        flip_bit_in_largest_tensor(ck9)
        torch.load(ck9, weights_only=True)        # torch alone does not notice
    else:   # killed while writing step 10's checkpoint: the temp file of the write is left
        tmp = tmp_path / "run" / ".ckpt_000010.pt.999999.tmp"
        tmp.write_bytes(ck9.read_bytes()[:5000])
    faultlog.inject(f"{damage} checkpoint at resume")
    p = run_train(tiny_args(char_data, tmp_path, "run", *SHORT, "--resume=auto"))
    _ok(p)
    text = (tmp_path / "run.txt").read_text()
    if damage == "partial-temp":
        assert "removed 1 partial checkpoint write(s) of a killed run: .ckpt_000010.pt.999999.tmp" in text
        assert f"resumed from {ck9} at step 10" in text and not tmp.exists()
    else:
        why = "content digest mismatch (corrupted data)" if damage == "bit-flip" else "unreadable ("
        assert f"checkpoint {ck9} is unreadable" in text and why in text, text
        assert f"warning: checkpoint {ck9} is unreadable" in p.stderr
        assert f"resumed from {tmp_path / 'run' / 'ckpt_000008.pt'} at step 9" in text
    _assert_continues_exactly(tmp_path / "full.jsonl", tmp_path / "run.jsonl", 12)
    faultlog.survived(f"{damage} checkpoint at resume")


# ---------------------------------------------------------------------------------------------
# signals

@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_step_saves_and_resumes_exactly(char_data, tmp_path, reference, sig):
    args = tiny_args(char_data, tmp_path, "run", *LONG)
    proc = _popen(args)
    _wait_for_step(proc, tmp_path / "run.jsonl", _kill_step())
    proc.send_signal(sig)
    faultlog.inject(f"{sig.name}")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    last = _last_step(tmp_path / "run.jsonl")
    text = (tmp_path / "run.txt").read_text()
    assert f"# stopping after step {last}: received {sig.name}; resume with --resume=auto" in text
    assert f"# checkpoint saved: {tmp_path / 'run' / f'ckpt_{last:06d}.pt'} (step {last}, signal {sig.name})" in text
    assert f"received {sig.name}: finishing the current step, then saving a checkpoint" in err
    _ok(run_train(args + ["--resume=auto"]))
    assert f"resumed from {tmp_path / 'run' / f'ckpt_{last:06d}.pt'} at step {last + 1}" in \
        (tmp_path / "run.txt").read_text()
    _assert_continues_exactly(reference[1], tmp_path / "run.jsonl", 150)
    faultlog.survived(f"{sig.name}")


@pytest.mark.slow
def test_second_signal_aborts_at_once(char_data, tmp_path):
    """A second SIGINT while the first is being handled: exit 130 (Ctrl-C twice)."""
    args = tiny_args(char_data, tmp_path, "run", *LONG, "--max_steps=100000", "--checkpoint_interval=0")
    proc = _popen(args)
    _wait_for_step(proc, tmp_path / "run.jsonl", 3)
    faultlog.inject("SIGINT twice")
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    # both signals may land in one step (abort, 130) or the first stop may win the race (0)
    assert proc.returncode in (0, 130), err
    if proc.returncode == 130:
        assert err.strip().splitlines()[-1] == "error: aborted by a second signal"
        assert "# aborted by a second signal (no checkpoint)" in (tmp_path / "run.txt").read_text()
    faultlog.survived("SIGINT twice")


# ---------------------------------------------------------------------------------------------
# guards: non-finite values and residual blow-up

@pytest.mark.slow
@pytest.mark.parametrize("kind", ["output", "grad"])
def test_nonfinite_stops_naming_step_layer_quantity(char_data, tmp_path, kind):
    p = run_train(tiny_args(char_data, tmp_path, "nan", *SHORT), nonfinite=(kind, 6))
    faultlog.inject(f"non-finite {kind}")
    assert p.returncode == 1
    err = p.stderr.strip().splitlines()
    assert len(err) == 1, p.stderr
    ck = tmp_path / "nan" / "ckpt_000004.pt"
    what = ("non-finite loss (nan); first non-finite layer loss at layer 2/2 (nan)" if kind == "output"
            else "non-finite grad norm (inf); first non-finite grad: ")
    assert err[0].startswith(f"error: step 6: {what}"), err[0]
    assert err[0].endswith(f"; last good checkpoint: {ck}")
    if kind == "grad":
        assert "first non-finite grad: transformer.h.0." in err[0]
    assert [s for s, _, _ in parse_train_lines(tmp_path / "nan.txt")] == list(range(6))
    assert sorted(os.listdir(tmp_path / "nan")) == ["ckpt_000004.pt"]
    assert checkpoint.load(str(ck))["step"] == 4
    assert "# error: step 6: non-finite" in (tmp_path / "nan.txt").read_text()
    assert [e["event"] for e in read_jsonl(tmp_path / "nan.jsonl")][-1] == "error"
    faultlog.survived(f"non-finite {kind}")


@pytest.mark.slow
def test_nonfinite_on_unlogged_step_names_no_wrong_layer(char_data, tmp_path):
    """Without per-layer heads, layer losses exist only on logged steps: a NaN on an unlogged
    step must not be blamed on layer 1 (the placeholder), the error says so instead."""
    p = run_train(tiny_args(char_data, tmp_path, "nan5", *SHORT, "--log_interval=5"),
                  nonfinite=("output", 6))
    faultlog.inject("non-finite loss on an unlogged step")
    assert p.returncode == 1
    err = p.stderr.strip().splitlines()
    assert err == [f"error: step 6: non-finite loss (nan); layer losses are not computed on this "
                   f"step of this model (stats_interval); last good checkpoint: {tmp_path / 'nan5' / 'ckpt_000004.pt'}"]
    faultlog.survived("non-finite loss on an unlogged step")


@pytest.mark.slow
def test_log_write_failure_is_one_error_line(char_data, tmp_path):
    """The log file cannot grow (a file-size limit standing in for a full disk) once training
    runs: one error line naming the OS error and the last good checkpoint, exit 1, no traceback."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (12000, 12000))
    args = tiny_args(char_data, tmp_path, "full", "--max_steps=200", "--eval_interval=0",
                     "--size_interval=0", "--sample_interval=0", "--checkpoint_interval=0")
    p = subprocess.run([sys.executable, TRAIN] + args, cwd=ROOT, env=trainer_env(), capture_output=True,
                       text=True, timeout=300, preexec_fn=limit)
    faultlog.inject("log write fails (file size limit)")
    assert p.returncode == 1, p.stderr[-2000:]
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert err[0].startswith("error: OSError: [Errno 27] File too large") and \
        err[0].endswith("; last good checkpoint: none"), err[0]
    assert os.path.getsize(tmp_path / "full.txt") <= 12000
    faultlog.survived("log write fails (file size limit)")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["output", "grad"])
def test_skip_nonfinite_skips_and_counts(char_data, tmp_path, kind):
    p = run_train(tiny_args(char_data, tmp_path, "skip", *SHORT, "--skip_nonfinite=True"),
                  nonfinite=(kind, 3))
    faultlog.inject(f"non-finite {kind} with skip_nonfinite")
    _ok(p)
    lines = [l for l in (tmp_path / "skip.txt").read_text().splitlines()
             if l.startswith("@") and " train " in l]
    assert len(lines) == 12
    assert not lines[2].endswith("skipped:1") and all(l.endswith(", skipped:1") for l in lines[3:])
    assert "# skipped step 3: step 3: non-finite" in (tmp_path / "skip.txt").read_text()
    ev = train_events(tmp_path / "skip.jsonl")
    assert [e["skipped_step"] for e in ev] == [s == 3 for s in range(12)]
    done = [e for e in read_jsonl(tmp_path / "skip.jsonl") if e["event"] == "done"][0]
    assert done["skipped"] == 1 and all(e["loss"] == e["loss"] for e in ev[4:])   # finite again
    faultlog.survived(f"non-finite {kind} with skip_nonfinite")


@pytest.mark.slow
def test_residual_limit_stops_with_layer_and_quantity(char_data, tmp_path):
    p = run_train(tiny_args(char_data, tmp_path, "res", *SHORT, "--size_interval=1",
                            "--residual_limit=0.5"))
    faultlog.inject("residual_std above residual_limit")
    assert p.returncode == 1
    err = p.stderr.strip().splitlines()
    assert len(err) == 1
    assert re.fullmatch(r"error: step 0: residual_std (prev|mid|next) at layer [12]/2 is [0-9.e+]+ "
                        r"> residual_limit 0\.5; last good checkpoint: none", err[0]), err[0]
    assert not (tmp_path / "res").exists() or not os.listdir(tmp_path / "res")
    faultlog.survived("residual_std above residual_limit")


# ---------------------------------------------------------------------------------------------
# disk full

@pytest.mark.slow
def test_disk_full_while_saving_checkpoint(char_data, tmp_path, monkeypatch, capsys):
    real_save = torch.save
    calls = []

    def full(obj, f, *a, **k):
        calls.append(obj["step"])
        if len(calls) == 2:                     # the second checkpoint (step 8)
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", full)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # as the subprocess runs (OMP_NUM_THREADS=1): equal losses
    try:
        code = tg.main(tiny_args(char_data, tmp_path, "df", *SHORT))
    finally:
        torch.set_num_threads(threads)
    faultlog.inject("disk full while saving a checkpoint")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    ck4, ck8 = tmp_path / "df" / "ckpt_000004.pt", tmp_path / "df" / "ckpt_000008.pt"
    assert err[0] == (f"error: saving checkpoint {ck8} failed ([Errno 28] No space left on device); "
                      f"previous checkpoints are intact; last good checkpoint: {ck4}")
    assert sorted(os.listdir(tmp_path / "df")) == ["ckpt_000004.pt"]     # no temp file, no ckpt_8
    assert checkpoint.load(str(ck4))["step"] == 4
    monkeypatch.setattr(torch, "save", real_save)
    # resume in a subprocess like the reference run (same thread count: bit-equal losses)
    _ok(run_train(tiny_args(char_data, tmp_path, "df", *SHORT, "--resume=auto")))
    _ok(run_train(tiny_args(char_data, tmp_path, "full", *SHORT)))
    _assert_continues_exactly(tmp_path / "full.jsonl", tmp_path / "df.jsonl", 12)
    faultlog.survived("disk full while saving a checkpoint")


def test_disk_full_while_writing_a_shard(tmp_path, monkeypatch, capsys):
    import fineweb
    src = tmp_path / "docs.txt"
    src.write_text("".join(f"line {i}: " + "word " * (i % 23 + 3) + "\n" for i in range(400)))
    args = ["--source", str(src), "--tokenizer", "char", "--txt-split-lines", "--procs", "1",
            "--shard-size", "2000", "--val-fraction", "0", "--quiet"]
    real, calls = fineweb._save_npy, []

    def full(f, arr):
        calls.append(1)
        if len(calls) == 3:
            f.write(b"\x93NUMPY partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, arr)
    monkeypatch.setattr(fineweb, "_save_npy", full)
    out = tmp_path / "out"
    rc = fineweb.main(args + ["--out", str(out)])
    faultlog.inject("disk full while writing a shard")
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: disk full: No space left on device"), err
    meta = json.load(open(out / "meta.json"))
    assert meta["complete"] is False and len(meta["shards"]) == 2
    assert sorted(os.listdir(out)) == sorted([s["file"] for s in meta["shards"]] + ["meta.json"])
    for s in meta["shards"]:                        # the finished shards are intact
        assert hashlib.sha256((out / s["file"]).read_bytes()).hexdigest() == s["sha256"]
    monkeypatch.setattr(fineweb, "_save_npy", real)
    assert fineweb.main(args + ["--out", str(out)]) == 0          # rerun finishes the build
    assert fineweb.main(args + ["--out", str(tmp_path / "ref")]) == 0
    capsys.readouterr()
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == \
        {n: (tmp_path / "ref" / n).read_bytes() for n in os.listdir(tmp_path / "ref")}
    faultlog.survived("disk full while writing a shard")


# ---------------------------------------------------------------------------------------------
# the same faults under FSDP (parallel=fsdp): sharded state is gathered into whole checkpoints

@pytest.mark.slow
def test_fsdp_kill9_under_max_restarts_resumes_exactly(char_data, tmp_path):
    """parallel=fsdp, 2 ranks, shared weights + heads + early exit: rank 1 killed -9 under
    torchrun --max-restarts=1; the group restarts, resumes from the last whole checkpoint by
    itself and every step's loss equals an uninterrupted FSDP run's, bit for bit."""
    fs = ["--parallel=fsdp", "--share_weights=True", "--layer_heads=True", "--early_exit=True",
          "--exit_threshold=0.05", "--exit_loss=all-layers"]
    long = [a if not a.startswith("--max_steps") else "--max_steps=60" for a in LONG]
    _ok(run_train(tiny_args(char_data, tmp_path / "ref", "full", *long, *fs), nproc=2))
    args = tiny_args(char_data, tmp_path, "run", *long, *fs)
    proc = _popen(args, nproc=2, extra=["--max-restarts=1"])
    k = random.Random(time.time_ns()).randrange(6, 40)
    _wait_for_step(proc, tmp_path / "run.jsonl", k)
    os.kill(_worker_pid(proc.pid, 1), signal.SIGKILL)
    faultlog.inject(f"FSDP: torchrun --max-restarts=1, rank 1 killed at step ~{k}")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    text = (tmp_path / "run.txt").read_text()
    assert "# torchrun restart 1: resume=auto" in text and "# resumed from " in text
    _assert_continues_exactly(tmp_path / "ref" / "full.jsonl", tmp_path / "run.jsonl", 60)
    faultlog.survived(f"FSDP: torchrun --max-restarts=1, rank 1 killed at step ~{k}")
