"""Shared fixtures for the trainer tests: a tiny char-level dataset written with numpy.

The manifest (meta.json) follows the contract, so these tests do not depend on fineweb.py's
build. Helpers run train_gpt2.py in a subprocess (OMP_NUM_THREADS=1) and parse its logs.
"""
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import prefork

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "train_gpt2.py")
sys.path.insert(0, ROOT)

def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes > ~5 s; `pytest -m 'not slow'` skips it")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch     # `-n 2`: one core per worker, like the trainer subprocesses (OMP 1)
        torch.set_num_threads(1)


# tiny model + data; every test run adds its own --key=value overrides. stats_interval=1: a plain
# model's train lines carry its per-layer stats on every step, so runs compare them too (the
# default computes them only on SIZE steps: test_train.test_stats_interval_skips_plain_stats_only)
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=16", "--vocab_size=64",
        "--T=16", "--B=2", "--total_batch_size=64", "--max_steps=6", "--warmup_steps=2",
        "--max_lr=1e-2", "--eval_interval=3", "--eval_iters=2", "--size_interval=2",
        "--sample_interval=3", "--sample_tokens=8", "--num_samples=1", "--checkpoint_interval=0",
        "--device=cpu", "--compile=False", "--dtype=float32", "--head_impl=naive",
        "--stats_interval=1"]

TRAIN_RE = re.compile(
    r"^@ (\d+) train (\d+\.\d{4}) , allloss: (\d+\.\d{4}|nan), confloss: (-?\d+\.\d{4}|nan), "
    r"targetloss: (-?\d+\.\d{4}|nan), earlystop: (\d\.\d{3}|nan), earlystopdict: \[([^\]]*)\], "
    r"lr:(\d\.\d{4}e[-+]\d\d), norm:(\d+\.\d{4}), dt: (\d+\.\d{2})ms, tok/sec: (\d+\.\d{2}), "
    r"flops:(\d+\.\d{2}), batch-reuse:(\d+)$")
SIZE_RE = re.compile(r"^SIZE COMPARISON prev (\S+) mid (\S+) next (\S+)$")
VAL_RE = re.compile(r"^@ (\d+) val (\d+\.\d{4})$")
VAL_EXIT_RE = re.compile(r"^@ (\d+) val-exit (\d+\.\d{4})$")
VAL_OBJECTIVE_RE = re.compile(r"^@ (\d+) val-objective (-?\d+\.\d{4})$")
VAL_LAYERS_RE = re.compile(r"^@ (\d+) val-layers \[([^\]]*)\], exit-depth: (\d+\.\d{3})$")
SAMPLE_RE = re.compile(r"^@ (\d+) sample (\d+): .*$")


def _write_shard(d, name, arr):
    path = os.path.join(d, name)
    np.save(path, arr.astype(np.uint16))
    with open(path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    return {"file": name, "split": name.split("_")[1], "tokens": int(arr.size), "sha256": sha}


# the char vocabulary of make_char_dataset (its first `vocab` symbols)
CHARS = "abcdefghijklmnopqrstuvwxyz .,!?;:'-()0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ\"#$%&*+/<=>@"


def make_char_dataset(d, n_train=6000, n_val=1500, vocab=40, seed=0, tokenizer="char"):
    """A learnable char corpus: a repeated pangram-like text plus noise; 1 val + 2 train shards."""
    os.makedirs(d, exist_ok=True)
    chars = CHARS[:vocab]
    rng = np.random.default_rng(seed)
    base = np.array([i % 13 + (i // 13) % 3 for i in range(97)])   # periodic pattern
    def stream(n):
        reps = np.resize(base, n)
        noise = rng.integers(0, vocab, n)
        return np.where(rng.random(n) < 0.1, noise, reps) % vocab
    shards = [_write_shard(d, "tiny_val_000000.npy", stream(n_val)),
              _write_shard(d, "tiny_train_000001.npy", stream(n_train // 2)),
              _write_shard(d, "tiny_train_000002.npy", stream(n_train - n_train // 2))]
    meta = {"source": "test", "tokenizer": tokenizer, "vocab_size": vocab, "eot": None,
            "dtype": "uint16", "shards": shards, "complete": True}
    if tokenizer == "char":
        meta["chars"] = chars
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f)
    return d


@pytest.fixture(scope="session")
def char_data(tmp_path_factory):
    return make_char_dataset(str(tmp_path_factory.mktemp("data") / "tiny"))


def run_train(args, cwd=ROOT, timeout=300, nproc=None, env_extra=None, nonfinite=None,
              torchrun=False):
    """Run train_gpt2.py -> CompletedProcess; nproc=N: N ranks with torchrun's worker
    environment (forked by tests/prefork.py; torchrun=True: under the real torchrun).
    nonfinite=(kind, step): through tests/nonfinite.py, which injects a NaN/inf at that step."""
    env = dict(trainer_env(), **(env_extra or {}))
    if nproc and torchrun:
        return subprocess.run(torchrun_cmd(nproc) + [TRAIN] + list(args), cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)
    if nonfinite:
        script, argv = NONFINITE, [nonfinite[0], str(nonfinite[1])] + list(args)
    else:
        script, argv = TRAIN, list(args)
    return run_script(script, argv, cwd=cwd, env=env, timeout=timeout, nproc=nproc)


NONFINITE = os.path.join(ROOT, "tests", "nonfinite.py")
_LAUNCHER = prefork.Launcher()


def trainer_env():
    """This environment for a trainer process: one thread, unbuffered output, and none of the
    torchrun variables (a test may itself run under some)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def torchrun_cmd(nproc, *options):
    """The real torchrun, one node, nproc workers; the script and its arguments follow."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", *options]


def _prefork(env):
    """Launch through tests/prefork.py? Not with PREFORK=0, nor where the child wants other
    threads than the server's one (OMP_NUM_THREADS is read when torch is imported)."""
    return os.environ.get("PREFORK", "1") != "0" and env.get("OMP_NUM_THREADS") == "1"


def run_script(script, argv, cwd=ROOT, env=None, timeout=300, nproc=None):
    """`python script *argv` as a new process -> CompletedProcess (text stdout/stderr).

    Forked from a server that has already imported torch and the repo (tests/prefork.py), so a
    launch costs milliseconds instead of ~5 CPU seconds; PREFORK=0 runs plain subprocesses
    (and torchrun for nproc ranks).
    env is the child's whole environment (default: this one with OMP_NUM_THREADS=1)."""
    env = dict(os.environ, OMP_NUM_THREADS="1") if env is None else dict(env)
    if not _prefork(env):
        launch = torchrun_cmd(nproc) if nproc else [sys.executable]
        return subprocess.run(launch + [script] + [str(a) for a in argv], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)
    return _LAUNCHER.run(script, argv, cwd, env, timeout, nproc=nproc)


def popen_train(args, env, cwd=ROOT):
    """train_gpt2.py running in the background -> a Popen-like handle (pid, poll, communicate,
    returncode); nothing else may be launched through the prefork server until it ends
    (PREFORK=0: a real subprocess.Popen)."""
    if not _prefork(env):
        return subprocess.Popen([sys.executable, TRAIN] + list(args), cwd=cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return _LAUNCHER.popen(TRAIN, args, cwd, env)


def run_py(cmd, cwd=None, env=None, timeout=300, capture_output=True, text=True):
    """subprocess.run(cmd, capture_output=True, text=True, ...) for cmd = [sys.executable,
    "script.py", *args], through run_script (the child's cwd defaults to the current one)."""
    assert cmd[0] == sys.executable and cmd[1].endswith(".py") and capture_output and text, cmd
    return run_script(cmd[1], cmd[2:], cwd=os.getcwd() if cwd is None else cwd, env=env,
                      timeout=timeout)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def train_events(path):
    return [e for e in read_jsonl(path) if e["event"] == "train"]


def tiny_args(data_dir, log_dir, name, *extra):
    """The tiny trainer arguments on data_dir, logging to log_dir as run `name`; no figures at
    the end (a test that checks them adds --img_dir=...)."""
    return TINY + [f"--dataset={data_dir}", f"--log_dir={log_dir}", "--img_dir=None",
                   f"--run_name={name}"] + list(extra)


def parse_train_lines(txt_path):
    """[(step, loss float, full match groups)] of the train lines of a text log."""
    out = []
    with open(txt_path) as f:
        for line in f:
            m = TRAIN_RE.match(line.rstrip("\n"))
            if m:
                out.append((int(m.group(1)), float(m.group(2)), m.groups()))
    return out


def flip_bit_in_largest_tensor(path):
    """Flip one bit in the middle of the largest tensor's stored bytes (zip entries are stored
    uncompressed) -> the entry's name."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        pos = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x04]))
    return info.filename


def pytest_terminal_summary(terminalreporter):
    """One line counting the faults test_faults.py injected and survived."""
    import faultlog
    line = faultlog.summary()
    if line:
        terminalreporter.write_sep("-", line)


SHAKESPEARE = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt")
_SHAKESPEARE_CHARS = set("\n !$&',-.3:;?" + "abcdefghijklmnopqrstuvwxyz" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def char_text_file(d, n_chars=300_000):
    """Path of a real-prose text file for char-level end-to-end runs (vocab <= 65).

    tiny Shakespeare when ../shared has it; otherwise the stdlib's pydoc topics (every Python
    install has them) reduced to Shakespeare's 65 characters and written under `d`.
    """
    if os.path.isfile(SHAKESPEARE):
        return SHAKESPEARE
    from pydoc_data.topics import topics
    text = "".join(c for c in "\n".join(topics[k] for k in sorted(topics)) if c in _SHAKESPEARE_CHARS)
    path = os.path.join(str(d), "prose.txt")
    with open(path, "w") as f:
        f.write(text[:n_chars])
    return path


def pytest_sessionfinish(session, exitstatus):
    _LAUNCHER.close()
    if hasattr(session.config, "workeroutput"):       # an xdist worker: tally to the controller
        import faultlog
        session.config.workeroutput["faults"] = faultlog.state()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """xdist controller: a worker ended; add its fault tally."""
    import faultlog
    faultlog.merge(getattr(node, "workeroutput", {}).get("faults", {"injected": [], "survived": []}))
