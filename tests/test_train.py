"""train_gpt2.py end to end on CPU with tiny models: log formats, DDP equivalence, resume,
compile, signals and guards, LR finder; DataLoader and LR schedule units."""
import json
import math
import os
import shutil
import sys

import numpy as np
import pytest
import torch

from conftest import (ROOT, SAMPLE_RE, SIZE_RE, TRAIN_RE, VAL_EXIT_RE, VAL_LAYERS_RE,
                      VAL_OBJECTIVE_RE, VAL_RE, make_char_dataset, parse_train_lines, read_jsonl,
                      run_train, tiny_args, train_events)
import train_gpt2 as tg
from dataloader import DataLoader

EARLY = ["--share_weights=True", "--layer_heads=True", "--early_exit=True",
         "--exit_threshold=0.05", "--exit_loss=all-layers"]
# random depth per step (shared weights): same depth on every rank, drawn again on resume
DEPTH = ["--share_weights=True", "--depth_sampling=uniform", "--depth_max=4"]
# cheap exits: layers 1..2 of 3 sample one head per micro step, each on half of the tokens
SAMPLED = ["--share_weights=True", "--n_layer=3", "--exit_loss=all-layers",
           "--exit_token_frac=0.5", "--exit_layer_frac=0.5"]


def _ok(p):
    assert p.returncode == 0, f"rc={p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}"


# ---------------------------------------------------------------------------------------------
# 1. log formats

@pytest.mark.slow
@pytest.mark.parametrize("variant", ["vanilla", "early-exit"])
def test_log_lines_match_journal_format(char_data, tmp_path, variant):
    # vanilla: B=4 (no accumulation), so the stats' micro batch is the whole step's batch
    extra = EARLY if variant == "early-exit" else ["--B=4"]
    p = run_train(tiny_args(char_data, tmp_path, "fmt", *extra, f"--img_dir={tmp_path / 'img'}"))
    _ok(p)
    txt, jsl = tmp_path / "fmt.txt", tmp_path / "fmt.jsonl"
    lines = txt.read_text().splitlines()
    L, steps = 2, 6
    kinds = []
    for line in lines:
        for kind, rx in (("train", TRAIN_RE), ("size", SIZE_RE), ("val", VAL_RE),
                         ("val-layers", VAL_LAYERS_RE), ("val-exit", VAL_EXIT_RE),
                         ("val-objective", VAL_OBJECTIVE_RE), ("sample", SAMPLE_RE)):
            if rx.match(line):
                kinds.append(kind)
                break
        else:
            assert line.startswith("# "), f"line matches no format: {line!r}"
            kinds.append("#")
    # header: commit, versions, config
    head = "\n".join(l for l in lines if l.startswith("# "))
    for key in ("# git: ", "packages: torch", "numpy", "tiktoken", "datasets", "world_size 1",
                "# config: {"):
        assert key in head
    cfg = json.loads(next(l for l in lines if l.startswith("# config: "))[len("# config: "):])
    assert cfg["n_layer"] == 2 and cfg["min_lr"] == pytest.approx(1e-3)
    # one train line per step; n_layer floats in earlystopdict; SIZE blocks of n_layer lines
    train = parse_train_lines(txt)
    assert [s for s, _, _ in train] == list(range(steps))
    for i, kind in enumerate(kinds):
        if kind == "size":
            assert kinds[i - (kinds[i::-1].index("train"))] == "train"
    size_blocks = []
    for i, kind in enumerate(kinds):
        if kind == "size" and kinds[i - 1] != "size":
            n = 0
            while i + n < len(kinds) and kinds[i + n] == "size":
                n += 1
            size_blocks.append(n)
    assert size_blocks == [L] * 3                          # steps 0, 2, 4 (size_interval=2)
    ev = train_events(jsl)
    assert [e["step"] for e in ev] == list(range(steps))
    for (step, loss, g), e in zip(train, ev):
        esd = [float(x) for x in g[6].split(",")]
        assert len(esd) == L
        assert g[1] == f"{e['loss']:.4f}" and g[2] == f"{e['allloss']:.4f}"
        assert g[5] == f"{e['earlystop']:.3f}" and esd == [round(x, 3) for x in e["earlystopdict"]]
        assert g[7] == f"{e['lr']:.4e}" and g[8] == f"{e['norm']:.4f}"
        assert g[12] == "1" and g[11] == f"{e['flops']:.2f}"
        assert e["lr"] == pytest.approx(tg.get_lr(step, {**tg.DEFAULTS, **cfg}), rel=1e-12)
        assert e["tok_sec"] == pytest.approx(64 / (e["dt_ms"] / 1000), rel=1e-6)
        assert "mfu" in e and e["peak_mem_bytes"] > 0
        # train = the last layer's CE; allloss = the sum of the layer losses
        assert e["loss"] == pytest.approx(e["layer_losses"][-1], rel=1e-5)
        assert e["allloss"] == pytest.approx(sum(e["layer_losses"]), rel=1e-5)
        if variant == "vanilla":
            assert esd == [0.0] * L and e["earlystop"] == 0.0
            assert e["objective"] == e["loss"]                    # final loss: the objective is that CE
        else:
            assert e["objective"] == pytest.approx(e["allloss"] / L, rel=1e-5)   # all-layers
            assert sum(e["earlystopdict"]) == pytest.approx(1.0, abs=1e-5)
            assert e["earlystop"] == pytest.approx(sum(e["earlystopdict"][:-1]), abs=1e-6)
    # SIZE COMPARISON numbers are the jsonl's residual_std (full float repr)
    sizes = [e for e in read_jsonl(jsl) if e["event"] == "size"]
    size_lines = [l for l in lines if l.startswith("SIZE")]
    assert len(size_lines) == L * len(sizes)
    for j, e in enumerate(sizes):
        for l, (pv, mv, nv) in enumerate(e["residual_std"]):
            assert size_lines[j * L + l] == f"SIZE COMPARISON prev {pv!r} mid {mv!r} next {nv!r}"
    vals = [e for e in read_jsonl(jsl) if e["event"] == "val"]
    assert [e["step"] for e in vals] == [0, 3, 5]
    vl = [VAL_RE.match(l) for l in lines if VAL_RE.match(l)]
    assert [m.group(2) for m in vl] == [f"{e['loss']:.4f}" for e in vals]
    for e in vals:                      # val = the last layer's CE, whatever the objective
        assert e["loss"] == e["layer_losses"][-1]
    ve = [m.group(2) for m in map(VAL_EXIT_RE.match, lines) if m]
    vo = [m.group(2) for m in map(VAL_OBJECTIVE_RE.match, lines) if m]
    if variant == "vanilla":
        assert ve == vo == [] and all(e["exit_ce"] is None and e["objective"] == e["loss"] for e in vals)
    else:
        assert ve == [f"{e['exit_ce']:.4f}" for e in vals] and vo == [f"{e['objective']:.4f}" for e in vals]
        for e in vals:
            assert e["objective"] == pytest.approx(sum(e["layer_losses"]) / L, rel=1e-5)
    assert vals[-1]["loss"] < vals[0]["loss"]
    # the trainer ends with plot.py's figures: loss, per-layer heat map, residual sizes (+ exits)
    figs = sorted(os.listdir(tmp_path / "img"))
    assert figs == ["fmt-exits.png", "fmt-layers.png", "fmt-residuals.png", "fmt.png"], figs
    assert f"# plot written: {tmp_path / 'img' / 'fmt-residuals.png'}" in txt.read_text()
    assert any(l.startswith("@ 3 sample 0: ") for l in lines)
    ck = torch.load(tmp_path / "fmt" / "ckpt_000005.pt", map_location="cpu", weights_only=True)
    assert ck["step"] == 5 and ck["model_config"]["n_layer"] == 2
    assert ck["tokenizer"]["name"] == "char" and len(ck["rng"]) == 1


def test_val_is_ce_whatever_the_exit_loss(char_data, tmp_path):
    """Runs that differ only in the objective log val on one scale: at step 0 (same initial
    model, same val data) the val lines are identical, whatever the exit loss; the objective
    (4-test's is ~0: confidence-weighted, mostly masked) goes to its own line."""
    vals = {}
    for loss in ("final", "4-test", "1-noise"):
        extra = ["--share_weights=True", "--layer_heads=True", f"--exit_loss={loss}", "--max_steps=4"]
        if loss == "4-test":
            extra += ["--early_exit=True", "--exit_mode=sample"]
        p = run_train(tiny_args(char_data, tmp_path, loss, *extra))
        _ok(p)
        lines = (tmp_path / f"{loss}.txt").read_text().splitlines()
        vals[loss] = [l for l in lines if VAL_RE.match(l)]
        obj = [float(m.group(2)) for m in map(VAL_OBJECTIVE_RE.match, lines) if m]
        ce = [float(VAL_RE.match(l).group(2)) for l in vals[loss]]
        assert len(ce) == 2 and all(c > 2.5 for c in ce)       # CE of a barely trained 40-way model
        if loss == "4-test":
            assert all(abs(o) < 0.5 for o in obj)              # ... not its objective
        assert len(parse_train_lines(tmp_path / f"{loss}.txt")) == 4   # even 1-noise's negative objective
    assert vals["final"][0] == vals["4-test"][0] == vals["1-noise"][0] == "@ 0 val " + vals["final"][0].split()[-1]


# ---------------------------------------------------------------------------------------------
# 2. DDP (gloo, 2 processes) == 1 process with gradient accumulation

@pytest.mark.slow
@pytest.mark.parametrize("variant", ["vanilla", "shared+early-exit", "sampled-exits"])
def test_ddp_two_procs_equals_grad_accum(char_data, tmp_path, variant):
    mode = {"vanilla": [], "shared+early-exit": EARLY + DEPTH[1:],
            "sampled-exits": SAMPLED}[variant]
    extra = mode + ["--max_steps=4", "--sample_interval=0", "--size_interval=0"]
    p1 = run_train(tiny_args(char_data, tmp_path / "one", "r", *extra))
    _ok(p1)
    p2 = run_train(tiny_args(char_data, tmp_path / "two", "r", *extra), nproc=2)
    _ok(p2)
    one, two = read_jsonl(tmp_path / "one" / "r.jsonl"), read_jsonl(tmp_path / "two" / "r.jsonl")
    h1 = next(e for e in one if e["event"] == "header")
    h2 = next(e for e in two if e["event"] == "header")
    assert (h1["world_size"], h1["grad_accum"]) == (1, 2) and (h2["world_size"], h2["grad_accum"]) == (2, 1)
    t1 = [e for e in one if e["event"] == "train"]
    t2 = [e for e in two if e["event"] == "train"]
    assert len(t1) == len(t2) == 4
    if variant == "shared+early-exit":      # the sampled depths vary; stats have depth entries
        assert len({e["depth"] for e in t1}) > 1
        assert all(len(e["earlystopdict"]) == e["depth"] for e in t1)
    for a, b in zip(t1, t2):
        assert abs(a["loss"] - b["loss"]) < 1e-5, (a["step"], a["loss"], b["loss"])
        assert abs(a["norm"] - b["norm"]) < 1e-4
        assert a["depth"] == b["depth"]
        if variant != "vanilla":   # stats over every micro step: equal too
            assert np.allclose(a["earlystopdict"], b["earlystopdict"], atol=1e-5)
            assert abs(a["allloss"] - b["allloss"]) < 1e-4   # the same exit samples drawn
    if variant == "sampled-exits":   # header names the mode; train lines keep their format
        txt = tmp_path / "one" / "r.txt"
        assert ("# exit heads of 1 random of layers 1..2 per micro step (exit_layer_frac=0.5) "
                "on a random 0.5 of the tokens (exit_token_frac), layer 3's on every token: "
                "1.5 head evaluations per token in training") in txt.read_text()
        assert [s for s, _, _ in parse_train_lines(txt)] == [0, 1, 2, 3]
    v1 = [e["loss"] for e in one if e["event"] == "val"]
    v2 = [e["loss"] for e in two if e["event"] == "val"]
    assert len(v1) == 2 and np.allclose(v1, v2, atol=1e-5)
    assert t1[-1]["loss"] < t1[0]["loss"]


@pytest.mark.slow
def test_sampled_stats_leave_training_unchanged(char_data, tmp_path):
    """Plain GPT (no per-layer heads): per-layer stats from stats_rows sequences in a separate
    no-grad forward give the same training (loss, norm, val: bit-identical, dropout on) as
    stats over the whole micro batch inside the training forward; the logged stats are those
    of the sampled sequences (self-consistent, finite, different numbers)."""
    extra = ["--B=4", "--dropout=0.1", "--size_interval=1"]
    _ok(run_train(tiny_args(char_data, tmp_path, "full", *extra, "--stats_rows=0")))
    _ok(run_train(tiny_args(char_data, tmp_path, "some", *extra, "--stats_rows=1")))
    full, some = train_events(tmp_path / "full.jsonl"), train_events(tmp_path / "some.jsonl")
    assert [(e["loss"], e["norm"]) for e in full] == [(e["loss"], e["norm"]) for e in some]
    vals = [[e["loss"] for e in read_jsonl(tmp_path / f"{n}.jsonl") if e["event"] == "val"]
            for n in ("full", "some")]
    assert vals[0] == vals[1]
    for e in some:
        assert e["allloss"] == pytest.approx(sum(e["layer_losses"]), rel=1e-5)
        assert all(math.isfinite(v) and v > 0 for v in e["layer_losses"])
    assert [e["allloss"] for e in some] != [e["allloss"] for e in full]
    sizes = [e for e in read_jsonl(tmp_path / "some.jsonl") if e["event"] == "size"]
    assert len(sizes) == 6 and all(len(e["residual_std"]) == 2 for e in sizes)


@pytest.mark.slow
def test_stats_interval_skips_plain_stats_only(char_data, tmp_path):
    """stats_interval=3 on a plain GPT: per-layer stats on steps 0 and 3 (equal to every-step
    stats there), nan on the other train lines, training bit-identical; SIZE steps (size
    interval 5) still get them."""
    extra = ["--B=4", "--dropout=0.1", "--size_interval=5", "--stats_rows=1"]
    _ok(run_train(tiny_args(char_data, tmp_path, "every", *extra)))
    _ok(run_train(tiny_args(char_data, tmp_path, "sparse", *extra, "--stats_interval=3")))
    every, sparse = train_events(tmp_path / "every.jsonl"), train_events(tmp_path / "sparse.jsonl")
    assert [(e["loss"], e["norm"]) for e in every] == [(e["loss"], e["norm"]) for e in sparse]
    for a, b in zip(every, sparse):
        if b["step"] in (0, 3, 5):
            assert b["allloss"] == a["allloss"] and b["layer_losses"] == a["layer_losses"]
        else:
            assert math.isnan(b["allloss"]) and all(math.isnan(v) for v in b["earlystopdict"])
    lines = [l for l in (tmp_path / "sparse.txt").read_text().splitlines() if l.startswith("@ ") and " train " in l]
    assert ", allloss: nan, " in lines[1] and ", earlystopdict: [nan, nan], " in lines[1]
    assert TRAIN_RE.match(lines[3])


# ---------------------------------------------------------------------------------------------
# 3. resume

@pytest.mark.slow
@pytest.mark.parametrize("reuse,stop,depth", [(1, 9, []), (2, 10, DEPTH[:1] + [
    "--depth_sampling=lognormal-poisson"])])
def test_resume_matches_uninterrupted(char_data, tmp_path, reuse, stop, depth):
    extra = ["--max_steps=20", "--dropout=0.1", "--shuffle=True", f"--batch_reuse={reuse}",
             "--eval_interval=5", "--size_interval=0", "--sample_interval=7",
             "--checkpoint_interval=4"] + depth
    _ok(run_train(tiny_args(char_data, tmp_path, "full", *extra)))
    _ok(run_train(tiny_args(char_data, tmp_path, "split", *extra, f"--stop_at_step={stop}")))
    ckpts = sorted(os.listdir(tmp_path / "split"))
    assert ckpts == ["ckpt_000004.pt", "ckpt_000008.pt", f"ckpt_{stop:06d}.pt"]
    p = run_train(tiny_args(char_data, tmp_path, "split", *extra, "--resume=auto"))
    _ok(p)
    full, split = parse_train_lines(tmp_path / "full.txt"), parse_train_lines(tmp_path / "split.txt")
    assert [s for s, _, _ in split] == list(range(stop + 1)) + list(range(stop + 1, 20))
    # the continued run's losses equal the uninterrupted run's (text and full precision)
    assert [l for _, l, _ in split[-10:]] == [l for _, l, _ in full[-10:]]
    ef = {e["step"]: e["loss"] for e in train_events(tmp_path / "full.jsonl")}
    es = {e["step"]: e["loss"] for e in train_events(tmp_path / "split.jsonl")}
    assert all(es[s] == ef[s] for s in range(20))
    depths = [e["depth"] for e in train_events(tmp_path / "split.jsonl")]
    assert depths == [e["depth"] for e in train_events(tmp_path / "full.jsonl")]
    assert len(set(depths)) > (1 if depth else 0)
    text = (tmp_path / "split.txt").read_text()
    assert f"# resumed from {tmp_path / 'split' / f'ckpt_{stop:06d}.pt'} at step {stop + 1}" in text
    assert f"stop_at_step={stop} reached" in text
    assert "train config differs" not in text   # resume/stop_at_step only; min_lr etc. resolved alike
    # img_dir=None (tiny_args): no figures, no plot notes, no img/ anywhere
    assert "plot written" not in text and not os.path.exists(tmp_path / "img")
    assert not os.path.exists(os.path.join(ROOT, "None"))


@pytest.mark.slow
def test_resume_notes_changed_train_config(char_data, tmp_path):
    """Resuming with a different optimisation constant works and says what changed."""
    extra = ["--max_steps=6", "--eval_interval=0", "--size_interval=0", "--sample_interval=0",
             "--checkpoint_interval=3"]
    _ok(run_train(tiny_args(char_data, tmp_path, "chg", *extra, "--stop_at_step=3")))
    _ok(run_train(tiny_args(char_data, tmp_path, "chg", *extra, "--resume=auto", "--max_lr=0.02")))
    notes = [l for l in (tmp_path / "chg.txt").read_text().splitlines() if "train config differs" in l]
    assert notes == ["# train config differs from the checkpoint's: max_lr 0.01 -> 0.02, min_lr 0.001 -> 0.002"]


# ---------------------------------------------------------------------------------------------
# 4. compile

def _can_compile():
    if sys.platform == "win32":
        return "torch.compile's inductor backend does not support Windows CPU here"
    if not (shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")):
        return "no C/C++ compiler on PATH (inductor's CPU backend needs one)"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_can_compile() is not None, reason=str(_can_compile()))
def test_compile_trains_evaluates_samples(char_data, tmp_path):
    extra = ["--max_steps=3", "--eval_interval=2", "--sample_interval=2", "--size_interval=0"]
    _ok(run_train(tiny_args(char_data, tmp_path, "eager", *extra)))
    p = run_train(tiny_args(char_data, tmp_path, "comp", *extra, "--compile=True"), timeout=600)
    _ok(p)
    text = (tmp_path / "comp.txt").read_text()
    assert "compile True" in text
    assert "@ 2 sample 0: " in text and "@ 2 val " in text
    a, b = train_events(tmp_path / "eager.jsonl"), train_events(tmp_path / "comp.jsonl")
    assert len(b) == 3
    assert np.allclose([e["loss"] for e in a], [e["loss"] for e in b], atol=1e-4)
    va = [e["loss"] for e in read_jsonl(tmp_path / "eager.jsonl") if e["event"] == "val"]
    vb = [e["loss"] for e in read_jsonl(tmp_path / "comp.jsonl") if e["event"] == "val"]
    assert np.allclose(va, vb, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# 5. LR finder  (kill -9, signals, corrupt checkpoints, guards, disk full: test_faults.py)

@pytest.mark.slow
def test_lr_find_writes_plot_and_suggestion(char_data, tmp_path):
    p = run_train(tiny_args(char_data, tmp_path, "lrf", "--lr_find", "--lr_find_steps=40",
                            "--lr_find_start=1e-5", "--lr_find_end=10.0",
                            f"--img_dir={tmp_path / 'img'}"))
    _ok(p)
    assert (tmp_path / "img" / "lrf_lr_find.png").stat().st_size > 1000
    ev = read_jsonl(tmp_path / "lrf_lr_find.jsonl")
    steps = [e for e in ev if e["event"] == "lr_find"]
    res = [e for e in ev if e["event"] == "lr_find_result"][0]
    lrs = [e["lr"] for e in steps]
    assert lrs[0] == pytest.approx(1e-5) and all(b > a for a, b in zip(lrs, lrs[1:]))
    assert 1e-5 <= res["suggested_lr"] <= res["min_loss_lr"]
    assert f"lr_find suggested max_lr: {res['suggested_lr']:.4e}" in (tmp_path / "lrf_lr_find.txt").read_text()
    assert not (tmp_path / "lrf").exists()                       # no checkpoint


# ---------------------------------------------------------------------------------------------
# units: DataLoader, LR schedule

def test_dataloader_ranks_disjoint_and_match_grad_accum(tmp_path):
    d = make_char_dataset(str(tmp_path / "d"), n_train=2000, n_val=400)
    import fineweb
    meta = fineweb.read_manifest(d)
    paths = fineweb.shard_paths(meta, "train")
    B, T, S = 2, 4, 32                                      # step = 32 tokens = 4 micro batches
    one = DataLoader(paths, B, T, S, 0, 1, 40, "train")
    ranks = [DataLoader(paths, B, T, S, r, 2, 40, "train") for r in range(2)]
    toks = [fineweb.load_tokens(p) for p in paths]
    n_blocks = sum(-(-(len(t) - 1) // S) for t in toks)          # ceil: the tail is covered
    assert one.total_blocks == n_blocks
    for step in range(n_blocks + 3):                        # past one epoch
        a = [one.next_batch() for _ in range(4)]
        b = [ranks[r].next_batch() for _ in range(2) for r in range(2)]
        # same tokens per step: 1 process x 4 micro == 2 ranks x 2 micro (rank-interleaved order)
        order = [b[0], b[1], b[2], b[3]]   # (m0,r0), (m0,r1), (m1,r0), (m1,r1)
        for (x1, y1), (x2, y2) in zip(a, order):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert torch.equal(a[0][1][0, :-1], a[0][0][0, 1:])       # y is x shifted by one
    # never past a shard's end, and the last block ends exactly at it (the tail is covered)
    for i, t in enumerate(toks):
        starts = [one.block_start(i, k) for k in range(one.nblocks[i])]
        assert all(s + S + 1 <= len(t) for s in starts) and starts[-1] + S + 1 == len(t)
        assert starts[:-1] == [k * S for k in range(len(starts) - 1)]


def test_dataloader_shuffle_deterministic_and_state(tmp_path):
    d = make_char_dataset(str(tmp_path / "d"), n_train=3000, n_val=400)
    import fineweb
    paths = fineweb.shard_paths(fineweb.read_manifest(d), "train")
    mk = lambda seed: DataLoader(paths, 2, 4, 8, 0, 1, 40, "train", shuffle=True, seed=seed)  # noqa
    a, b, c = mk(1), mk(1), mk(2)
    xa = [a.next_batch()[0] for _ in range(50)]
    xb = [b.next_batch()[0] for _ in range(50)]
    xc = [c.next_batch()[0] for _ in range(50)]
    assert all(torch.equal(p, q) for p, q in zip(xa, xb))
    assert not all(torch.equal(p, q) for p, q in zip(xa, xc))
    st = a.state_dict()
    nxt = [a.next_batch()[0] for _ in range(400)]             # crosses epochs
    a2 = mk(1)
    a2.load_state_dict(st)
    assert all(torch.equal(p, a2.next_batch()[0]) for p in nxt)
    # an epoch visits every block exactly once (shards of position ids: x[0, 0] names the block)
    pos = [tmp_path / "p0.npy", tmp_path / "p1.npy"]
    np.save(pos[0], np.arange(0, 1003, dtype=np.uint16))
    np.save(pos[1], np.arange(2000, 2501, dtype=np.uint16))
    e = DataLoader([str(p) for p in pos], 2, 4, 8, 0, 1, 65536, "train", shuffle=True, seed=3)
    assert e.total_blocks == 126 + 63             # ceil(1002 / 8), ceil(500 / 8)
    starts = [int(e.next_batch()[0][0, 0]) for _ in range(e.total_blocks)]
    assert sorted(starts) == ([k * 8 for k in range(125)] + [1003 - 9]
                              + [2000 + k * 8 for k in range(62)] + [2000 + 501 - 9])
    assert starts != sorted(starts) and e.state_dict()["epoch"] == 1
    # no shuffle: in order; each shard's last block is end-aligned (covers the tail, no overrun)
    f = DataLoader([str(p) for p in pos], 2, 4, 8, 0, 1, 65536, "train")
    seen = [f.next_batch() for _ in range(f.total_blocks)]
    assert [int(x[0, 0]) for x, _ in seen] == sorted(starts)
    assert int(seen[125][1].max()) == 1002 and int(seen[-1][1].max()) == 2500


def test_dataloader_rejects_out_of_vocab_tokens(tmp_path):
    d = make_char_dataset(str(tmp_path / "d"), vocab=40)
    import fineweb
    paths = fineweb.shard_paths(fineweb.read_manifest(d), "train")
    with pytest.raises(fineweb.DataError, match="token id 39 >= vocab_size 30"):
        DataLoader(paths, 2, 4, 8, 0, 1, 30, "train")


def test_lr_schedules():
    cfg = dict(tg.DEFAULTS)
    # build-nanogpt: linear warmup to max_lr, cosine to min_lr = 0.1 * max_lr
    assert tg.get_lr(0, cfg) == pytest.approx(6e-4 / 715)
    assert tg.get_lr(714, cfg) == pytest.approx(6e-4)
    mid = 715 + (19073 - 715) // 2
    assert tg.get_lr(mid, cfg) == pytest.approx(6e-5 + 0.5 * (1 + math.cos(math.pi * (mid - 715) / (19073 - 715))) * 5.4e-4)
    assert tg.get_lr(19073, cfg) == pytest.approx(6e-5)
    oc = dict(cfg, lr_schedule="onecycle", max_steps=100)
    lrs = [tg.get_lr(s, oc) for s in range(100)]
    assert lrs[0] == pytest.approx(6e-4 / 25) and lrs[30] == pytest.approx(6e-4)
    assert max(lrs) == pytest.approx(6e-4) and lrs[-1] == pytest.approx(6e-4 / 25 / 1e4)
    assert all(b >= a for a, b in zip(lrs[:31], lrs[1:31])) and all(b <= a for a, b in zip(lrs[30:], lrs[31:]))
