"""What a hostile or unlucky user does to a run (issue 14), reproduced for real: a full disk
(a small tmpfs, or a file-size limit) while a checkpoint is written, rolling back to an older
checkpoint, two processes with one run_name, kill -9 with the run lock held, a fresh start over
earlier runs, data that does not match the checkpoint or the tokenizer. Each injected fault is
counted in the "fault injection: ..." summary line.
"""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest

import faultlog
from conftest import (ROOT, TRAIN, flip_bit_in_largest_tensor, make_char_dataset, read_jsonl,
                      run_train, tiny_args, train_events, trainer_env)

pytestmark = pytest.mark.slow     # every test here runs the trainer in subprocesses

SHORT = ["--max_steps=12", "--eval_interval=0", "--size_interval=0", "--sample_interval=0",
         "--checkpoint_interval=4"]


def _ok(p):
    assert p.returncode == 0, f"rc={p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}"


def _losses(jsonl):
    out = {}
    for e in train_events(jsonl):
        out[e["step"]] = e["loss"]          # a re-logged step: the later line wins
    return out


def _one_error_line(p, code):
    assert p.returncode == code, (p.returncode, p.stderr[-3000:])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), p.stderr[-3000:]
    return err[0]


def _snapshot(*dirs):
    out = {}
    for d in dirs:
        for root, subdirs, files in os.walk(d):
            out[root] = (sorted(subdirs), sorted(files))
            for f in files:
                p = os.path.join(root, f)
                with open(p, "rb") as fh:
                    out[p] = (os.stat(p).st_mtime_ns, fh.read())
    return out


# ---------------------------------------------------------------------------------------------
# 1. disk full while a checkpoint is written (torch turns ENOSPC into RuntimeError "unexpected pos")

@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (root only): room for the logs and two tiny checkpoints, not three."""
    d = tmp_path / "tmpfs"
    d.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield d
    subprocess.run(["umount", str(d)], capture_output=True)


def test_disk_full_on_checkpoint_save_real_enospc(char_data, small_tmpfs, tmp_path):
    logs = small_tmpfs / "logs"
    args = tiny_args(char_data, logs, "df", *SHORT) + [f"--img_dir={tmp_path / 'img'}"]
    p = run_train(args)
    faultlog.inject("disk full (ENOSPC on a 1 MiB tmpfs) while saving a checkpoint")
    ck8, ck11 = logs / "df" / "ckpt_000008.pt", logs / "df" / "ckpt_000011.pt"
    line = _one_error_line(p, 1)
    assert line == (f"error: saving checkpoint {ck11} failed ([Errno 28] No space left on device); "
                    f"previous checkpoints are intact; last good checkpoint: {ck8}"), line
    assert sorted(os.listdir(logs / "df")) == ["ckpt_000004.pt", "ckpt_000008.pt"]   # no temp file
    text = (logs / "df.txt").read_text()
    assert f"# error: saving checkpoint {ck11} failed" in text
    assert read_jsonl(logs / "df.jsonl")[-1]["event"] == "error"
    os.remove(logs / "df" / "ckpt_000004.pt")           # the user frees space and resumes
    _ok(run_train(args + ["--resume=auto"]))
    _ok(run_train(tiny_args(char_data, tmp_path / "ref", "df", *SHORT)))
    assert _losses(logs / "df.jsonl") == _losses(tmp_path / "ref" / "df.jsonl")
    faultlog.survived("disk full (ENOSPC on a 1 MiB tmpfs) while saving a checkpoint")


def test_file_size_limit_on_checkpoint_save(char_data, tmp_path):
    """ulimit -f below a checkpoint's size (385 kB), above the logs': the first save fails."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    p = subprocess.run([sys.executable, TRAIN] + tiny_args(char_data, tmp_path, "fs", *SHORT),
                       cwd=ROOT, env=trainer_env(), capture_output=True, text=True, timeout=300,
                       preexec_fn=limit)
    faultlog.inject("file size limit (ulimit -f) while saving a checkpoint")
    ck4 = tmp_path / "fs" / "ckpt_000004.pt"
    line = _one_error_line(p, 1)
    assert line == (f"error: saving checkpoint {ck4} failed ([Errno 27] File too large); "
                    f"previous checkpoints are intact; last good checkpoint: none"), line
    assert os.listdir(tmp_path / "fs") == []
    assert f"# error: saving checkpoint {ck4} failed" in (tmp_path / "fs.txt").read_text()
    faultlog.survived("file size limit (ulimit -f) while saving a checkpoint")


# ---------------------------------------------------------------------------------------------
# 2. rolling back to an older checkpoint: the resumed branch owns the run

def test_rollback_branch_owns_the_run(char_data, tmp_path):
    every2 = ["--checkpoint_interval=2", "--keep_checkpoints=20"]
    _ok(run_train(tiny_args(char_data, tmp_path, "rb", *SHORT, *every2)))
    d = tmp_path / "rb"
    assert sorted(os.listdir(d)) == [f"ckpt_{s:06d}.pt" for s in (2, 4, 6, 8, 10, 11)]
    old = {s: (d / f"ckpt_{s:06d}.pt").read_bytes() for s in (6, 8, 10, 11)}
    faultlog.inject("resume from an older checkpoint, then resume=auto")
    p = run_train(tiny_args(char_data, tmp_path, "rb", *SHORT, "--checkpoint_interval=2",
                            "--keep_checkpoints=2", f"--resume={d / 'ckpt_000004.pt'}",
                            "--stop_at_step=7"))
    _ok(p)
    text = (tmp_path / "rb.txt").read_text()
    assert sorted(n for n in os.listdir(d) if n.endswith(".pt")) == ["ckpt_000006.pt", "ckpt_000007.pt"]
    moved = [l for l in text.splitlines() if "abandoned" in l]
    assert moved, text
    aside = [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs if r != str(d)]
    assert sorted(os.path.basename(a) for a in aside) == [f"ckpt_{s:06d}.pt" for s in old], aside
    assert sorted(open(a, "rb").read() for a in aside) == sorted(old.values())
    p = run_train(tiny_args(char_data, tmp_path, "rb", *SHORT, "--checkpoint_interval=2",
                            "--keep_checkpoints=2", "--resume=auto"))
    _ok(p)
    assert f"resumed from {d / 'ckpt_000007.pt'} at step 8" in (tmp_path / "rb.txt").read_text()
    faultlog.survived("resume from an older checkpoint, then resume=auto")


# ---------------------------------------------------------------------------------------------
# 3. two runs with one run_name at once; a kill -9 leaves no lock that blocks

LONG = ["--max_steps=100000", "--eval_interval=0", "--size_interval=0", "--sample_interval=0",
        "--checkpoint_interval=5", "--keep_checkpoints=2"]


def _start(args):
    return subprocess.Popen([sys.executable, TRAIN] + args, cwd=ROOT, env=trainer_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_step(proc, jsonl, step, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            ev = [json.loads(l) for l in open(jsonl).read().splitlines()[:-1]]
            if any(e.get("event") == "train" and e["step"] >= step for e in ev):
                return
        except (FileNotFoundError, ValueError):
            pass
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached")


@pytest.mark.parametrize("second", ["fresh", "resume=auto"])
def test_second_process_with_same_run_name_is_refused(char_data, tmp_path, second):
    args = tiny_args(char_data, tmp_path, "lk", *LONG)
    first = _start(args)
    try:
        _wait_step(first, tmp_path / "lk.jsonl", 6)
        faultlog.inject(f"second process on a live run ({second})")
        before = os.listdir(tmp_path)
        p = run_train(args + ["--max_steps=20"] + (["--resume=auto"] if second != "fresh" else []),
                      timeout=120)
        line = _one_error_line(p, 2)
        assert line.startswith(f"error: run 'lk' in {tmp_path} is in use by process {first.pid}"), line
        assert os.listdir(tmp_path) == before and not (tmp_path / "lk" / "prev").exists()
        assert first.poll() is None                       # the first run goes on
        _wait_step(first, tmp_path / "lk.jsonl", 12)
    finally:
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]
    steps = [e["step"] for e in train_events(tmp_path / "lk.jsonl")]
    assert steps == list(range(len(steps)))               # one run wrote the log
    faultlog.survived(f"second process on a live run ({second})")


def test_kill9_leaves_no_blocking_lock(char_data, tmp_path):
    args = tiny_args(char_data, tmp_path, "k9", *LONG)
    proc = _start(args)
    _wait_step(proc, tmp_path / "k9.jsonl", 6)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    faultlog.inject("kill -9 while holding the run lock")
    p = run_train(tiny_args(char_data, tmp_path, "k9", *SHORT, "--max_steps=14", "--resume=auto"))
    _ok(p)
    assert "# resumed from " in (tmp_path / "k9.txt").read_text()
    faultlog.survived("kill -9 while holding the run lock")


# ---------------------------------------------------------------------------------------------
# 9. a fresh start over earlier runs keeps every earlier run

def test_fresh_starts_keep_every_earlier_run(char_data, tmp_path):
    quick = ["--max_steps=4", "--eval_interval=0", "--size_interval=0", "--sample_interval=0",
             "--checkpoint_interval=2"]
    texts = []
    for seed in (1, 2, 3):
        _ok(run_train(tiny_args(char_data, tmp_path, "fr", *quick, f"--seed={seed}")))
        texts.append((tmp_path / "fr.txt").read_bytes())
    kept = sorted(open(os.path.join(r, f), "rb").read() for r, _, fs in os.walk(tmp_path / "fr")
                  for f in fs if f == "fr.txt")
    assert kept == sorted(texts[:2])                       # both earlier runs' logs survive
    note = [l for l in texts[2].decode().splitlines() if "earlier run" in l]
    assert note and "moved to" in note[0], texts[2][:2000]


# ---------------------------------------------------------------------------------------------
# 4. dataset_source builds with the run's tokenizer

def test_dataset_source_uses_the_run_tokenizer(tmp_path):
    src = tmp_path / "src.txt"
    src.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    data = tmp_path / "built"
    p = run_train(tiny_args(data, tmp_path / "logs", "ds", "--max_steps=2", "--eval_interval=0",
                            "--sample_interval=0", "--size_interval=0", f"--dataset_source={src}",
                            "--tokenizer=char"))
    _ok(p)
    meta = json.load(open(data / "meta.json"))
    assert meta["tokenizer"] == "char" and meta["chars"] == " .abcdefghijklmnopqrstuvwxyz"


# ---------------------------------------------------------------------------------------------
# 5. data that does not match the checkpoint

@pytest.fixture
def trained(char_data, tmp_path):
    """A char run stopped at step 5 (checkpoint ckpt_000005.pt) -> its log dir."""
    _ok(run_train(tiny_args(char_data, tmp_path / "logs", "dv", *SHORT, "--stop_at_step=5")))
    return tmp_path / "logs"


def _bad_resume(char_data_dir, logs, *extra):
    before = _snapshot(logs, char_data_dir)
    p = run_train(tiny_args(char_data_dir, logs, "dv", *SHORT, "--resume=auto", *extra))
    line = _one_error_line(p, 2)
    assert _snapshot(logs, char_data_dir) == before, "a refused resume changed files"
    return line


def test_resume_on_data_with_other_vocabulary_is_refused(char_data, trained, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(char_data, other)
    meta = json.load(open(other / "meta.json"))
    meta["chars"] = meta["chars"][::-1]                  # same size, other characters per id
    json.dump(meta, open(other / "meta.json", "w"))
    faultlog.inject("resume on data with another vocabulary")
    line = _bad_resume(other, trained)
    assert "vocabulary" in line and str(other) in line, line
    faultlog.survived("resume on data with another vocabulary")


def test_resume_on_smaller_data_is_refused(trained, tmp_path):
    small = make_char_dataset(str(tmp_path / "small"), n_train=400, n_val=200)
    faultlog.inject("resume on a smaller dataset")
    line = _bad_resume(small, trained)
    assert "position" in line and small in line, line
    faultlog.survived("resume on a smaller dataset")


# ---------------------------------------------------------------------------------------------
# 5, 6. the evaluation tools: the checkpoint's content digest, data of another vocabulary

@pytest.fixture(scope="module")
def char_ckpt(char_data, tmp_path_factory):
    """A checkpoint of a 2-step char run on char_data."""
    d = tmp_path_factory.mktemp("evalck")
    _ok(run_train(tiny_args(char_data, d, "ev", "--max_steps=2", "--eval_interval=0",
                            "--sample_interval=0", "--size_interval=0")))
    return d / "ev" / "ckpt_000001.pt"


def _main_error(fn, argv, capsys):
    with pytest.raises(SystemExit) as e:
        fn([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_eval_tools_refuse_a_bit_flipped_checkpoint(char_data, char_ckpt, tmp_path, capsys):
    import eval_exit
    import hellaswag
    bad = tmp_path / "run" / "ckpt_000001.pt"
    bad.parent.mkdir()
    shutil.copy(char_ckpt, bad)
    flip_bit_in_largest_tensor(bad)
    faultlog.inject("bit flip in a checkpoint given to eval_exit.py and hellaswag.py")
    before = _snapshot(tmp_path)
    line = _main_error(eval_exit.main, ["--ckpt", bad, "--data", char_data, "--img-dir",
                                        tmp_path / "img", "--decode-tokens", 0], capsys)
    assert f"checkpoint {bad} is unreadable (content digest mismatch" in line, line
    fixture = os.path.join(ROOT, "tests", "fixtures", "hellaswag_tiny.jsonl")
    line = _main_error(hellaswag.main, ["--ckpt", bad, "--data", fixture, "--device", "cpu"], capsys)
    assert f"checkpoint {bad} is unreadable (content digest mismatch" in line, line
    assert _snapshot(tmp_path) == before
    faultlog.survived("bit flip in a checkpoint given to eval_exit.py and hellaswag.py")


def test_eval_exit_refuses_data_of_another_vocabulary(char_data, char_ckpt, tmp_path, capsys):
    import eval_exit
    other = tmp_path / "other"
    shutil.copytree(char_data, other)
    meta = json.load(open(other / "meta.json"))
    meta["chars"] = meta["chars"][::-1]
    json.dump(meta, open(other / "meta.json", "w"))
    line = _main_error(eval_exit.main, ["--ckpt", char_ckpt, "--data", other, "--img-dir",
                                        tmp_path / "img", "--out", tmp_path / "x.md"], capsys)
    assert "vocabulary" in line and str(other) in line, line
    assert not (tmp_path / "x.md").exists() and not (tmp_path / "img").exists()
