"""tracking.py: jsonl events -> wandb metrics; offline runs read back from their .wandb file."""
import glob
import json
import os
import struct
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT
import tracking

TRAIN_EVENT = {"event": "train", "time": 1.0, "step": 7, "loss": 2.5, "allloss": 9.0,
               "earlystopdict": [0.25, 0.75], "layer_losses": [3.0, 2.5], "mfu": None,
               "skipped_step": False, "lr": 1e-3}


def test_metrics_of_events():
    assert tracking.metrics(TRAIN_EVENT) == {
        "train/loss": 2.5, "train/allloss": 9.0, "train/lr": 1e-3,
        "train.earlystopdict/L1": 0.25, "train.earlystopdict/L2": 0.75,
        "train.layer_losses/L1": 3.0, "train.layer_losses/L2": 2.5}
    size = {"event": "size", "step": 4, "residual_std": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]}
    assert tracking.metrics(size) == {
        "size.residual_std/L1.prev": 1.0, "size.residual_std/L1.mid": 2.0,
        "size.residual_std/L1.next": 3.0, "size.residual_std/L2.prev": 4.0,
        "size.residual_std/L2.mid": 5.0, "size.residual_std/L2.next": 6.0}
    assert tracking.metrics({"event": "sample", "step": 3, "index": 0, "text": "hi"}) == {}
    assert tracking.metrics({"event": "header", "config": {"a": 1}}) == {}
    assert tracking.metrics({"event": "val", "step": 1, "loss": float("nan")}) == {}


def test_missing_wandb_is_one_error_naming_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)          # import wandb -> ImportError
    with pytest.raises(tracking.TrackingError) as e:
        tracking.check({"wandb_log": True})
    assert str(e.value) == "wandb_log=True needs the wandb package: pip install wandb"
    tracking.check({"wandb_log": False})                     # off: wandb never imported
    assert tracking.start({"wandb_log": False}, {}, "x", False, True) is None


# ---------------------------------------------------------------------------------------------
# reading an offline run back

def wandb_records(path):
    """Protobuf records of a .wandb file: a 7-byte header (":W&B", magic, version) then the
    LevelDB log format: 32 KiB blocks of chunks (crc32c 4 bytes, length 2 LE, type 1 byte:
    1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", data[:7]
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:                                   # block trailer padding
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and n == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + n]
        pos += 7 + n
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
    return out


def _key(item):
    return item.key or "/".join(item.nested_key)


def read_offline_run(run_dir):
    """{"id", "project", "name", "config" {key: value}, "history" [{key: value}]} of one run dir."""
    (path,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    run = {"history": [], "config": {}}
    for rec in wandb_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run.update(id=rec.run.run_id, project=rec.run.project, name=rec.run.display_name)
            run["config"].update({_key(u): json.loads(u.value_json) for u in rec.run.config.update})
        elif kind == "history":
            run["history"].append({_key(i): json.loads(i.value_json) for i in rec.history.item})
    return run


def offline_runs(wandb_dir):
    return [read_offline_run(d) for d in
            sorted(glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*")))]


def wandb_env(tmp):
    return dict(os.environ, WANDB_MODE="offline", WANDB_DIR=str(tmp), WANDB_SILENT="true",
                WANDB_CONFIG_DIR=os.path.join(str(tmp), "wandb_config"),
                WANDB_CACHE_DIR=os.path.join(str(tmp), "wandb_cache"), OMP_NUM_THREADS="1",
                PYTHONPATH=ROOT)


@pytest.mark.slow
def test_tracker_offline_run_and_resume(tmp_path):
    """Two processes: a run logging steps 0..2, then a resumed one logging 3..4: same run id."""
    pytest.importorskip("wandb")
    code = textwrap.dedent("""
        import sys, tracking
        first, last, resume = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
        t = tracking.start({"wandb_log": True, "wandb_project": "proj", "run_name": "tiny"},
                           {"n_layer": 2, "max_lr": 0.01}, "ckpts", resume, True)
        for s in range(first, last + 1):
            t.log({"event": "train", "step": s, "loss": 1.0 / (s + 1), "layer_losses": [2.0, s]})
        t.log({"event": "header", "config": {}})
        t.finish()
    """)
    for args in (["0", "2", "0"], ["3", "4", "1"]):
        r = subprocess.run([sys.executable, "-c", code] + args, cwd=str(tmp_path),
                           env=wandb_env(tmp_path), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    first, second = offline_runs(tmp_path)
    run_id = (tmp_path / "ckpts" / "wandb_run_id").read_text().strip()
    assert first["id"] == second["id"] == run_id
    assert (first["project"], first["name"]) == ("proj", "tiny")
    assert first["config"]["n_layer"] == 2 and first["config"]["max_lr"] == 0.01
    rows = [{k: v for k, v in h.items() if not k.startswith("_")}
            for run in (first, second) for h in run["history"]]
    assert rows == [{"step": s, "train/loss": 1.0 / (s + 1), "train.layer_losses/L1": 2.0,
                     "train.layer_losses/L2": s} for s in range(5)]
    assert [h["_step"] for run in (first, second) for h in run["history"]] == list(range(5))


# ---------------------------------------------------------------------------------------------
# the trainer

@pytest.mark.slow
def test_trainer_offline_run_resumed_into_the_same_run(tmp_path, char_data):
    """A tiny quickstart with wandb_log=True stops after step 2 (checkpoint), a second
    invocation resumes: both offline run directories carry one run id, and their history holds
    the jsonl's train losses at steps 0..5, per-layer losses and exit fractions, val losses."""
    pytest.importorskip("wandb")
    from conftest import run_train, tiny_args, read_jsonl
    log_dir = str(tmp_path / "log")
    common = tiny_args(char_data, log_dir, "wb", "--wandb_log=True", "--wandb_project=proj",
                       "--checkpoint_interval=3", "--early_exit=True", "--exit_threshold=0.05")
    env = {k: v for k, v in wandb_env(tmp_path).items() if k.startswith("WANDB_")}
    r1 = run_train(common + ["--stop_at_step=2"], env_extra=env)
    assert r1.returncode == 0, r1.stderr[-2000:]
    r2 = run_train(common + ["--resume=auto"], env_extra=env)
    assert r2.returncode == 0, r2.stderr[-2000:]
    first, second = offline_runs(tmp_path)
    assert first["id"] == second["id"]
    assert (first["project"], first["name"]) == ("proj", "wb")
    assert first["config"]["n_layer"] == 2 and first["config"]["run_name"] == "wb"
    hist = [h for run in (first, second) for h in run["history"]]
    events = read_jsonl(os.path.join(log_dir, "wb.jsonl"))
    train = {e["step"]: e for e in events if e["event"] == "train"}
    assert sorted(train) == list(range(6))
    logged = {h["step"]: h for h in hist if "train/loss" in h}
    assert sorted(logged) == list(range(6))
    for s, e in train.items():
        assert logged[s]["train/loss"] == pytest.approx(e["loss"], rel=1e-12)
        assert [logged[s][f"train.layer_losses/L{l}"] for l in (1, 2)] == \
            pytest.approx(e["layer_losses"], rel=1e-12)
        assert [logged[s][f"train.earlystopdict/L{l}"] for l in (1, 2)] == \
            pytest.approx(e["earlystopdict"], rel=1e-12)
    val = {e["step"]: e["loss"] for e in events if e["event"] == "val"}
    assert {h["step"]: h["val/loss"] for h in hist if "val/loss" in h} == pytest.approx(val)
    assert any("size.residual_std/L2.next" in h for h in hist)


def test_trainer_without_wandb_is_one_error_line(tmp_path, char_data):
    """wandb_log=True where `import wandb` fails (a shadowing package that raises ImportError,
    as an absent one does): exit 2, one error line naming the install command, no log written."""
    from conftest import run_train, tiny_args
    shadow = tmp_path / "shadow" / "wandb"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'wandb'\")\n")
    log_dir = tmp_path / "log"
    r = run_train(tiny_args(char_data, str(log_dir), "nowb", "--wandb_log=True"),
                  env_extra={"PYTHONPATH": str(tmp_path / "shadow")})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: wandb_log=True needs the wandb package: pip install wandb"]
    assert not log_dir.exists()
