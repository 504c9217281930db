"""FSDP2 (parallel=fsdp) and multi-node torchrun on CPU with gloo: FSDP(2) == DDP(2) == one
process with gradient accumulation, two torchrun agents (c10d rendezvous on localhost, like two
nodes) == one standalone run, resume across modes and world sizes, per-rank memory, bad input."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import (ROOT, TRAIN, read_jsonl, run_script, run_train, tiny_args, train_events,
                      trainer_env)

# shared weights, a head after every layer, early exit: every feature FSDP must carry
EARLY = ["--share_weights=True", "--layer_heads=True", "--early_exit=True",
         "--exit_threshold=0.05", "--exit_loss=all-layers"]
QUIET = ["--sample_interval=0", "--size_interval=0", "--eval_interval=10"]


def _ok(p):
    assert p.returncode == 0, f"rc={p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}"


def _losses(path):
    return [(e["step"], e["loss"], e["norm"]) for e in train_events(path)]


def _assert_same(a, b, tol=1e-5):
    assert [s for s, _, _ in a] == [s for s, _, _ in b]
    for (s, la, na), (_, lb, nb) in zip(a, b):
        assert abs(la - lb) < tol, (s, la, lb)
        assert abs(na - nb) < 10 * tol, (s, na, nb)


# 20 steps with checkpoints every 4: the uninterrupted reference of every test below
FULL = EARLY + QUIET + ["--max_steps=20", "--shuffle=True", "--checkpoint_interval=4",
                        "--keep_checkpoints=10"]


@pytest.fixture(scope="module")
def ddp_run(char_data, tmp_path_factory):
    """An uninterrupted DDP(2) run of FULL -> its run directory (r.jsonl, r/ckpt_*.pt)."""
    d = tmp_path_factory.mktemp("ddp")
    _ok(run_train(tiny_args(char_data, d, "r", *FULL), nproc=2))
    return d


def _assert_prefix(full, part):
    """part's steps are full's first steps, with the same losses and norms."""
    assert part and [s for s, _, _ in part] == [s for s, _, _ in full[:len(part)]]
    _assert_same(full[:len(part)], part)


@pytest.mark.slow
def test_fsdp_equals_ddp_equals_grad_accum(char_data, tmp_path, ddp_run):
    """20 steps: the same losses, grad norms and val losses (fp32, within 1e-5) for FSDP on 2
    ranks, DDP on 2 ranks and 1 process accumulating 2 micro steps."""
    _ok(run_train(tiny_args(char_data, tmp_path, "one", *FULL)))
    _ok(run_train(tiny_args(char_data, tmp_path, "fsdp", *FULL, "--parallel=fsdp"), nproc=2))
    runs = {"one": tmp_path / "one.jsonl", "ddp": ddp_run / "r.jsonl",
            "fsdp": tmp_path / "fsdp.jsonl"}
    one, ddp, fsdp = (_losses(p) for p in runs.values())
    assert len(one) == 20 and one[-1][1] < one[0][1]
    _assert_same(one, ddp)
    _assert_same(ddp, fsdp)
    vals = {n: [e["loss"] for e in read_jsonl(p) if e["event"] == "val"] for n, p in runs.items()}
    assert len(vals["fsdp"]) == 3
    assert np.allclose(vals["one"], vals["ddp"], atol=1e-5)
    assert np.allclose(vals["fsdp"], vals["ddp"], atol=1e-5)
    head = next(e for e in read_jsonl(runs["fsdp"]) if e["event"] == "header")
    assert head["config"]["parallel"] == "fsdp" and head["world_size"] == 2


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_equal_standalone(char_data, tmp_path, ddp_run):
    """Two torchrun agents (--nnodes=2, node_rank 0/1, one process each, c10d rendezvous on
    localhost) under FSDP train exactly like one standalone 2-process run (6 steps); rank 0
    alone writes the log and the checkpoints."""
    env = trainer_env()
    port = _free_port()
    args = tiny_args(char_data, tmp_path / "nodes", "r", *FULL, "--parallel=fsdp",
                     "--stop_at_step=5")
    agents = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={n}",
         "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
         "--rdzv_id=test-two-nodes", TRAIN] + args,
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for n in (0, 1)]
    outs = [a.communicate(timeout=300)[0] for a in agents]
    assert [a.returncode for a in agents] == [0, 0], outs
    nodes = _losses(tmp_path / "nodes" / "r.jsonl")
    assert len(nodes) == 6
    _assert_prefix(_losses(ddp_run / "r.jsonl"), nodes)
    head = next(e for e in read_jsonl(tmp_path / "nodes" / "r.jsonl") if e["event"] == "header")
    assert head["world_size"] == 2
    assert sorted(os.listdir(tmp_path / "nodes" / "r")) == ["ckpt_000004.pt", "ckpt_000005.pt"]


@pytest.mark.slow
def test_resume_across_modes_and_world_sizes(char_data, tmp_path, ddp_run):
    """FSDP(2) -> DDP(2) -> 1 process -> FSDP(2), each leg resuming the last: every step's loss
    equals an uninterrupted DDP(2) run (where the world size changes the step's tokens are the
    same: the loader's position is counted in optimizer steps of total_batch_size tokens), and
    each checkpoint's data position equals the uninterrupted run's at that step."""
    legs = [(["--parallel=fsdp", "--stop_at_step=3"], 2), (["--stop_at_step=7"], 2),
            (["--stop_at_step=11"], None), (["--parallel=fsdp"], 2)]
    for i, (args, nproc) in enumerate(legs):
        resume = ["--resume=auto"] if i else []
        _ok(run_train(tiny_args(char_data, tmp_path / "legs", "r", *FULL, *args, *resume),
                      nproc=nproc))
    full, legs_ = _losses(ddp_run / "r.jsonl"), _losses(tmp_path / "legs" / "r.jsonl")
    assert [s for s, _, _ in legs_] == list(range(20))
    _assert_same(full, legs_)
    heads = [e for e in read_jsonl(tmp_path / "legs" / "r.jsonl") if e["event"] == "header"]
    assert [(h["config"]["parallel"], h["world_size"]) for h in heads] == [
        ("fsdp", 2), ("ddp", 2), ("ddp", 1), ("fsdp", 2)]
    for step in (4, 8, 12, 19):          # interval checkpoints of both, and the final one
        a = torch.load(ddp_run / "r" / f"ckpt_{step:06d}.pt", weights_only=True)
        b = torch.load(tmp_path / "legs" / "r" / f"ckpt_{step:06d}.pt", weights_only=True)
        assert a["loader"] == b["loader"], step
        assert a["model"].keys() == b["model"].keys()
        assert torch.equal(b["model"]["lm_head.weight"], b["model"]["transformer.wte.weight"])
        for k in a["model"]:   # summation order differs between world sizes; Adam
            # normalises near-zero gradients, so weights agree to ~lr * 1e-2, not to 1e-5
            torch.testing.assert_close(a["model"][k], b["model"][k], atol=1e-3, rtol=1e-3)
    text = (tmp_path / "legs" / "r.txt").read_text()
    assert "world size changed (2 -> 1)" in text and "world size changed (1 -> 2)" in text


def test_fsdp_shards_parameters_and_optimizer_state(char_data, tmp_path):
    """Each of 2 ranks holds about half the parameter and AdamW bytes (bench/fsdp_memory.py's
    accounting, measured on the live tensors)."""
    out = tmp_path / "mem.json"
    _ok(run_script(os.path.join(ROOT, "bench", "fsdp_memory.py"),
                   ["--worker", "--n_layer=4", "--n_embd=64", "--out", str(out)],
                   env=trainer_env(), nproc=2))
    import json
    r = json.loads(out.read_text())
    assert r["world"] == 2
    assert r["fsdp"]["param_opt_bytes"] <= 1.2 / 2 * r["ddp"]["param_opt_bytes"], r
    assert r["ddp"]["param_opt_bytes"] == 4 * 4 * r["n_params"]    # fp32 params + grads + 2 Adam


@pytest.mark.parametrize("args,env,msg", [
    (["--parallel=zero3"], {}, "unknown parallel 'zero3'; known: ddp, fsdp"),
    (["--parallel=fsdp"], {}, "parallel='fsdp' needs torchrun"),
])
def test_parallel_bad_input(char_data, tmp_path, args, env, msg):
    p = run_train(tiny_args(char_data, tmp_path, "bad", *args), env_extra=env)
    assert p.returncode == 2, p.stderr
    err = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and msg in err[0], p.stderr
    assert not (tmp_path / "bad.txt").exists()


def test_fsdp_resume_of_a_different_model_is_one_line_error(char_data, tmp_path):
    """Resuming under FSDP from a checkpoint of another model shape -> one error line."""
    _ok(run_train(tiny_args(char_data, tmp_path, "r", "--max_steps=2", *QUIET)))
    p = run_train(tiny_args(char_data, tmp_path, "r", "--max_steps=4", "--n_embd=64",
                            "--parallel=fsdp", "--resume=auto", *QUIET), nproc=2,
                  torchrun=True)
    assert p.returncode != 0
    errs = [l for l in p.stderr.splitlines() if l.startswith("error: ")]
    assert len(errs) == 1 and "different model config" in errs[0] and "n_embd" in errs[0], p.stderr
    # no traceback of ours (torchrun's agent reports the child's exit code 2 with its own)
    assert 'train_gpt2.py", line' not in p.stderr and "ChildFailedError" in p.stderr
