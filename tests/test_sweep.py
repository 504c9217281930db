"""sweep.py: grid expansion, skip-finished, seed-002 tables (rows and sort order), and an
end-to-end tiny sweep through the real trainer."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import sweep  # noqa: E402

from conftest import char_text_file, run_py  # noqa: E402

# final (train, val) per (pos_encoding, n_embd): train and val orders differ on purpose
LOSSES = {("learned", 32): (1.30, 1.60), ("learned", 64): (1.10, 1.70),
          ("rope", 32): (1.20, 1.50), ("rope", 64): (1.00, 1.65)}


def write_sweep(tmp_path, max_steps=5, name="t"):
    path = tmp_path / f"{name}.py"
    path.write_text(f'NAME = "{name}"\nGRID = {{"pos_encoding": ["learned", "rope"], "n_embd": [32, 64], '
                    f'"n_layer": [2]}}\nBASE = {{"max_steps": {max_steps}}}\n')
    return sweep.load_sweep(str(path))


def fake_log(log_dir, name, train, val, max_steps=5, finish=True):
    os.makedirs(log_dir, exist_ok=True)
    steps = max_steps if finish else max_steps - 2
    lines = [f"@ {s} train {train + 0.01 * (steps - 1 - s):.4f} , allloss: 0.0000, confloss: 0.0000, "
             f"targetloss: 0.0000, earlystop: 0.000, earlystopdict: [0.0, 0.0], lr:6.0000e-04, "
             f"norm:1.0000, dt: 10.00ms, tok/sec: 100.00, flops:0.01, batch-reuse:1" for s in range(steps)]
    lines.append(f"@ {steps - 1} val {val:.4f}")
    with open(os.path.join(log_dir, name + ".txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def table_rows(md, header_start):
    """Rows (list of cells) of the first markdown table after the line starting with header_start;
    seed 002's group separators come back as '---'."""
    lines = md.split("\n")
    i = next(j for j, l in enumerate(lines) if l.startswith(header_start))
    while not lines[i].startswith("|"):
        i += 1
    rows = []
    for l in lines[i + 2:]:
        if not l.startswith("|"):
            break
        rows.append("---" if set(l) <= {"|", "-"} else [c.strip() for c in l.strip("|").split("|")])
    return rows


def test_expand_names_and_commands(tmp_path):
    sw = write_sweep(tmp_path)
    runs = sweep.expand(sw)
    assert [r[0] for r in runs] == ["t-learned-e32-l2", "t-learned-e64-l2", "t-rope-e32-l2", "t-rope-e64-l2"]
    assert runs[2][1] == {"pos_encoding": "rope", "n_embd": 32, "n_layer": 2}
    cmd = sweep.command({**sw, "preset": "config/shakespeare_char.py"}, runs[2][0], runs[2][1],
                        "train_gpt2.py", "python", ["--preset_scale=cpu"])
    assert cmd == ["python", "train_gpt2.py", "config/shakespeare_char.py", "--max_steps=5",
                   "--pos_encoding=rope", "--n_embd=32", "--n_layer=2", "--run_name=t-rope-e32-l2",
                   "--preset_scale=cpu"]


def test_bad_sweep_files(tmp_path):
    p = tmp_path / "bad.py"
    p.write_text('GRID = {"n_embd": []}\n')
    with pytest.raises(ValueError, match="non-empty"):
        sweep.load_sweep(str(p))
    p.write_text('GRID = {"n_embd": [32]}\nBASE = {"n_embd": 64}\n')
    with pytest.raises(ValueError, match="both in BASE and GRID: n_embd"):
        sweep.load_sweep(str(p))
    r = run_py([sys.executable, os.path.join(ROOT, "sweep.py"), str(tmp_path / "none.py")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr == f"error: sweep file {tmp_path / 'none.py'}: no such file\n"


def test_table_rows_and_sort_order(tmp_path):
    sw = write_sweep(tmp_path)
    log_dir = str(tmp_path / "log")
    for name, params in sweep.expand(sw):
        tr, va = LOSSES[(params["pos_encoding"], params["n_embd"])]
        fake_log(log_dir, name, tr, va, finish=name != "t-learned-e64-l2")
    out, done, missing = sweep.write_table(sw, log_dir, train_window=1)
    assert out == os.path.join(log_dir, "sweeps", "t.md")
    assert missing == [("t-learned-e64-l2", "partial")]
    md = open(out).read()
    # all finished runs by val: rope-32 (1.50) < learned-32 (1.60) < rope-64 (1.65)
    assert table_rows(md, "## all runs by Final/val_loss") == [
        ["t-rope-e32-l2", "rope", "32", "2", "1.2", "1.5"],
        ["t-learned-e32-l2", "learned", "32", "2", "1.3", "1.6"],
        ["t-rope-e64-l2", "rope", "64", "2", "1", "1.65"]]
    assert [r[0] for r in table_rows(md, "## all runs by Final/train_loss")] == [
        "t-rope-e64-l2", "t-rope-e32-l2", "t-learned-e32-l2"]
    # pos_encoding grouped by (n_embd, n_layer), groups ordered by their best val
    assert table_rows(md, "pos_encoding, grouped by n_embd, n_layer, sorted by Final/val_loss") == [
        ["32", "2", "rope", "1.2", "1.5"], ["32", "2", "learned", "1.3", "1.6"], "---",
        ["64", "2", "rope", "1", "1.65"]]
    assert table_rows(md, "n_embd, grouped by pos_encoding, n_layer, sorted by Final/train_loss") == [
        ["rope", "2", "64", "1", "1.65"], ["rope", "2", "32", "1.2", "1.5"], "---",
        ["learned", "2", "32", "1.3", "1.6"]]
    assert "## n_layer" not in md  # a key with one value gets no section
    assert "- t-learned-e64-l2: partial" in md


def test_train_window_mean(tmp_path):
    sw = write_sweep(tmp_path)
    log_dir = str(tmp_path / "log")
    fake_log(log_dir, "t-rope-e32-l2", 1.2, 1.5)  # train lines 1.24, 1.23, 1.22, 1.21, 1.20
    assert sweep.result(log_dir, "t-rope-e32-l2", train_window=2)["train"] == pytest.approx(1.205)
    assert sweep.result(log_dir, "t-rope-e32-l2", train_window=5)["train"] == pytest.approx(1.22)
    assert sweep.finished(log_dir, sw, "t-rope-e32-l2")
    assert not sweep.finished(log_dir, sw, "t-rope-e64-l2")


def test_skip_finished_runs_only_launches_the_rest(tmp_path):
    """A fake trainer writes the journal-format log; finished runs (log complete, or .done marker)
    are not launched again."""
    sw = write_sweep(tmp_path, max_steps=3)
    log_dir = str(tmp_path / "log")
    fake_log(log_dir, "t-learned-e32-l2", 1.3, 1.6, max_steps=3)           # finished by its log
    os.makedirs(os.path.join(log_dir, "sweeps", "t"))
    runs = dict(sweep.expand(sw))
    with open(os.path.join(log_dir, "sweeps", "t", "t-rope-e64-l2.done"), "w") as f:  # finished by marker
        json.dump({"args": sweep._args(sw, "t-rope-e64-l2", runs["t-rope-e64-l2"])}, f)
    fake_log(log_dir, "t-rope-e64-l2", 1.0, 1.65, max_steps=3)
    trainer = tmp_path / "fake_trainer.py"
    trainer.write_text(
        "import sys, os\n"
        "args = dict(a[2:].split('=', 1) for a in sys.argv[1:])\n"
        "name = args['run_name']\n"
        f"os.makedirs({log_dir!r}, exist_ok=True)\n"
        f"with open(os.path.join({log_dir!r}, 'launched.txt'), 'a') as f: f.write(name + '\\n')\n"
        "loss = 1.0 + int(args['n_embd']) / 100\n"
        f"with open(os.path.join({log_dir!r}, name + '.txt'), 'w') as f:\n"
        "    for s in range(int(args['max_steps'])):\n"
        "        f.write(f'@ {s} train {loss:.4f} , lr:1e-3\\n')\n"
        "    f.write(f'@ {s} val {loss + 0.1:.4f}\\n')\n"
        "sys.exit(3 if 'learned' in name else 0)\n")
    msgs = []
    status = sweep.run_sweep(sw, log_dir, trainer=str(trainer), echo=msgs.append)
    assert status == {"t-learned-e32-l2": "skipped", "t-rope-e64-l2": "skipped", "t-learned-e64-l2": 3,
                      "t-rope-e32-l2": 0}
    assert open(os.path.join(log_dir, "launched.txt")).read().split() == ["t-learned-e64-l2", "t-rope-e32-l2"]
    assert os.path.isfile(os.path.join(log_dir, "sweeps", "t", "t-rope-e32-l2.done"))
    assert not os.path.isfile(os.path.join(log_dir, "sweeps", "t", "t-learned-e64-l2.done"))
    # second pass: the failed run's log is complete (it exited 3 after writing it) -> skipped by log
    status = sweep.run_sweep(sw, log_dir, trainer=str(trainer), echo=msgs.append)
    assert set(status.values()) == {"skipped"}


def test_parallel_gpu_slots(tmp_path):
    """--gpus 0,1: each run gets its own CUDA_VISIBLE_DEVICES, two at a time."""
    sw = write_sweep(tmp_path, max_steps=2)
    log_dir = str(tmp_path / "log")
    trainer = tmp_path / "fake_trainer.py"
    trainer.write_text(
        "import sys, os, time\n"
        "args = dict(a[2:].split('=', 1) for a in sys.argv[1:])\n"
        f"with open(os.path.join({log_dir!r}, args['run_name'] + '.gpu'), 'w') as f:\n"
        "    f.write(os.environ['CUDA_VISIBLE_DEVICES'])\n"
        "time.sleep(0.3)\n")
    os.makedirs(log_dir)
    status = sweep.run_sweep(sw, log_dir, trainer=str(trainer), gpus=["0", "1"], echo=lambda m: None)
    assert list(status.values()) == [0, 0, 0, 0]
    gpus = [open(os.path.join(log_dir, n + ".gpu")).read() for n, _ in sweep.expand(sw)]
    assert gpus[:2] == ["0", "1"] and set(gpus) == {"0", "1"}


@pytest.mark.slow
def test_end_to_end_tiny_sweep(tmp_path):
    """Two real train_gpt2.py runs on char-level tiny Shakespeare (a few steps), table written,
    rerun skips both."""
    text_file = char_text_file(tmp_path)
    data = tmp_path / "data"
    r = run_py([sys.executable, os.path.join(ROOT, "fineweb.py"), "--source", text_file,
                        "--tokenizer", "char", "--out", str(data), "--quiet", "--procs", "1"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    sw_path = tmp_path / "e2e.py"
    sw_path.write_text(
        'NAME = "e2e"\nGRID = {"pos_encoding": ["learned", "rope"]}\n'
        f'BASE = {{"dataset": {str(data)!r}, "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, '
        '"B": 4, "T": 32, "total_batch_size": 128, "max_steps": 6, "warmup_steps": 1, "eval_interval": 3, '
        '"eval_iters": 1, "sample_interval": 0, "checkpoint_interval": 6, "device": "cpu", '
        '"compile": False, "hellaswag": None, "dirty_ok": True}\n')
    cmd = [sys.executable, os.path.join(ROOT, "sweep.py"), str(sw_path), "--log-dir", "runs"]   # not the default: the trainer must log there too
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr + "".join(
        open(os.path.join(tmp_path, "runs", "sweeps", "e2e", f)).read()
        for f in os.listdir(os.path.join(tmp_path, "runs", "sweeps", "e2e")) if f.endswith(".out"))
    md = open(tmp_path / "runs" / "sweeps" / "e2e.md").read()
    rows = table_rows(md, "## all runs by Final/val_loss")
    assert sorted(r[0] for r in rows) == ["e2e-learned", "e2e-rope"]
    vals = [float(r[-1]) for r in rows]
    assert vals == sorted(vals)
    import plot
    for row in rows:
        log = plot.parse_log(tmp_path / "runs" / f"{row[0]}.txt")
        assert float(row[-1]) == pytest.approx(log["val"][-1], rel=1e-5)
        assert list(log["step"]) == list(range(6))
    assert not (tmp_path / "log").exists()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0 and r.stdout.count("skip ") == 2 and "start" not in r.stdout


def test_trainer_done_marker(tmp_path):
    sw = write_sweep(tmp_path, max_steps=100)
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    p = log_dir / "t-rope-e32-l2.txt"
    p.write_text("# ==== run t-rope-e32-l2 started ====\n@ 3 train 1.0 , lr:1e-3\n@ 3 val 1.1\n# done: 4 steps\n")
    assert sweep.finished(str(log_dir), sw, "t-rope-e32-l2")  # max_steps not reached, but marked done
    p.write_text(p.read_text() + "# ==== run t-rope-e32-l2 started ====\n@ 4 train 1.0 , lr:1e-3\n")
    assert not sweep.finished(str(log_dir), sw, "t-rope-e32-l2")  # restarted after the marker


def test_edited_base_reruns(tmp_path):
    """A run recorded with other trainer arguments (marker or the log's `# command:` line) is stale."""
    sw = write_sweep(tmp_path, max_steps=3)
    log_dir = tmp_path / "log"
    (log_dir / "sweeps" / "t").mkdir(parents=True)
    name, params = sweep.expand(sw)[0]
    args = sweep._args(sw, name, params)
    marker = log_dir / "sweeps" / "t" / (name + ".done")
    marker.write_text(json.dumps({"args": args}))
    assert sweep.finished(str(log_dir), sw, name, args=args)
    sw2 = {**sw, "base": {"max_steps": 4}}
    assert not sweep.finished(str(log_dir), sw2, name, args=sweep._args(sw2, name, params))
    marker.unlink()
    cmd = " ".join(["train_gpt2.py"] + args)
    (log_dir / (name + ".txt")).write_text(f"# ==== run {name} started ====\n# command: {cmd}\n"
                                           "@ 2 train 1.0 , lr:1e-3\n@ 2 val 1.1\n# done: 3 steps\n")
    assert sweep.finished(str(log_dir), sw, name, args=args)
    assert not sweep.finished(str(log_dir), sw2, name, args=sweep._args(sw2, name, params))
