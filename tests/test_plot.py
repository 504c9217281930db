"""plot.py: the parsed numbers and the plotted numbers equal the log's numbers."""
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import plot  # noqa: E402

FIX = os.path.join(ROOT, "tests", "fixtures")
L = 3


def _train_line(step, loss, esd, lr=6e-4):
    esd_s = ", ".join(f"{x:.1f}" if x in (0.0, 1.0) else f"{x}" for x in esd)
    return (f"@ {step} train {loss:.4f} , allloss: {3 * loss:.4f}, confloss: 0.0000, targetloss: 0.0000, "
            f"earlystop: {1 - esd[-1]:.3f}, earlystopdict: [{esd_s}], lr:{lr:.4e}, norm:{0.5 + step:.4f}, "
            f"dt: 1769.77ms, tok/sec: 74061.71, flops:30.47, batch-reuse:1")


def synthetic_log(path, steps=12, size_every=4, val_every=5, partial=True):
    """Write a journal-format log; returns the numbers written."""
    rng = np.random.default_rng(0)
    want = {"step": [], "train": [], "esd": [], "size_step": [], "prev": [], "mid": [], "next": [],
            "val_step": [], "val": [], "val_layers": []}
    lines = ["run_name: synth", "config: {...}", "git: abc123 (dirty: False)"]
    for s in range(steps):
        loss = round(float(11 - 0.5 * s + rng.normal(0, 0.2)), 4)
        a = round(float(rng.uniform(0, 0.5)), 4)
        esd = [a, round(0.5 - a, 4), 0.5]
        lines.append(_train_line(s, loss, esd))
        want["step"].append(s)
        want["train"].append(loss)
        want["esd"].append(esd)
        if s % size_every == 0:
            want["size_step"].append(s)
            prev = [round(float(1.5 ** (l + s / 4)), 6) for l in range(L)]
            mid = [p * 0.9 for p in prev]
            nxt = [1.0006515979766846] * L
            for l in range(L):
                lines.append(f"SIZE COMPARISON prev {prev[l]} mid {mid[l]} next {nxt[l]}")
            want["prev"].append(prev)
            want["mid"].append(mid)
            want["next"].append(nxt)
        if s % val_every == 0 or s == steps - 1:
            v = round(loss + 0.1, 4)
            layers = [round(v + 0.3 * (L - 1 - l), 4) for l in range(L)]
            lines.append(f"@ {s} val {v:.4f}")
            lines.append(f"@ {s} val-layers [{', '.join(f'{x:.4f}' for x in layers)}]")
            want["val_step"].append(s)
            want["val"].append(v)
            want["val_layers"].append(layers)
    text = "\n".join(lines) + "\n"
    if partial:  # a run still writing: half a line, then half a SIZE block would follow
        text += _train_line(steps, 1.0, [0, 0, 1])[:40]
    with open(path, "w") as f:
        f.write(text)
    return want


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "synth.txt"
    return str(path), synthetic_log(path)


def test_parse_log_numbers(log):
    path, want = log
    r = plot.parse_log(path)
    assert r["name"] == "synth"
    np.testing.assert_array_equal(r["step"], want["step"])  # partial last line ignored
    np.testing.assert_array_equal(r["train"], want["train"])
    np.testing.assert_allclose(r["allloss"], 3 * np.array(want["train"]), atol=6e-5)
    assert r["earlystopdict"] == want["esd"]
    np.testing.assert_array_equal(r["lr"], [6e-4] * len(want["step"]))
    np.testing.assert_array_equal(r["norm"], np.array(want["step"]) + 0.5)
    np.testing.assert_array_equal(r["dt"], 1769.77)
    np.testing.assert_array_equal(r["tok_sec"], 74061.71)
    np.testing.assert_array_equal(r["flops"], 30.47)
    np.testing.assert_array_equal(r["batch_reuse"], 1)
    np.testing.assert_array_equal(r["size_step"], want["size_step"])
    np.testing.assert_array_equal(r["size_prev"], want["prev"])
    np.testing.assert_array_equal(r["size_mid"], want["mid"])
    np.testing.assert_array_equal(r["size_next"], want["next"])
    np.testing.assert_array_equal(r["val_step"], want["val_step"])
    np.testing.assert_array_equal(r["val"], want["val"])
    np.testing.assert_array_equal(r["val_layers_step"], want["val_step"])
    np.testing.assert_array_equal(r["val_layers"], want["val_layers"])


def test_parse_journal_excerpts():
    """The journal's own lines: 12-layer SIZE blocks with and without `mid`."""
    r = plot.parse_log(os.path.join(FIX, "journal_8exp_double_attn.txt"))
    np.testing.assert_array_equal(r["step"], [949])
    np.testing.assert_array_equal(r["train"], [5.2751])
    np.testing.assert_array_equal(r["allloss"], [64.1261])
    np.testing.assert_array_equal(r["lr"], [5.9999e-04])
    np.testing.assert_array_equal(r["norm"], [7.9968])
    np.testing.assert_array_equal(r["dt"], [1769.77])
    np.testing.assert_array_equal(r["tok_sec"], [74061.71])
    assert r["earlystopdict"] == [[0.0] * 12]
    assert r["size_mid"] is None
    assert r["size_prev"].shape == (1, 12)
    assert r["size_prev"][0, 0] == 1.0659868717193604 and r["size_prev"][0, -1] == 138020.09375
    assert r["size_next"][0, 5] == 1.1064351797103882

    r = plot.parse_log(os.path.join(FIX, "journal_8exp_res_mul.txt"))
    np.testing.assert_array_equal(r["step"], [949, 3499])
    np.testing.assert_array_equal(r["size_step"], [949, 3499])
    assert r["size_prev"].shape == (2, 12)
    assert r["size_prev"][1, -1] == 521954624.0
    assert r["size_mid"][0, 0] == 0.6713976860046387
    assert r["size_next"][1, 4] == 1.0006517171859741


def test_resumed_run_later_lines_win(tmp_path):
    p = tmp_path / "res.txt"
    lines = [_train_line(s, 10 - s, [0, 0, 1]) for s in range(5)]
    lines += ["@ 4 val 6.5000"]
    lines += [_train_line(s, 20 - s, [0, 0, 1]) for s in range(3, 7)]  # resumed from step 3
    lines += ["@ 4 val 16.5000", "@ 6 val 14.5000"]
    p.write_text("\n".join(lines) + "\n")
    r = plot.parse_log(p)
    np.testing.assert_array_equal(r["step"], [0, 1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(r["train"], [10, 9, 8, 17, 16, 15, 14])
    np.testing.assert_array_equal(r["val_step"], [4, 6])
    np.testing.assert_array_equal(r["val"], [16.5, 14.5])
    assert len(r["earlystopdict"]) == 7


def test_partial_size_block_dropped(tmp_path):
    p = tmp_path / "live.txt"
    lines = [_train_line(0, 5, [0, 0, 1])] + [f"SIZE COMPARISON prev {l + 1}.0 next 1.0" for l in range(3)]
    lines += [_train_line(1, 4, [0, 0, 1])] + [f"SIZE COMPARISON prev {l + 2}.0 next 1.0" for l in range(2)]
    p.write_text("\n".join(lines) + "\nSIZE COMPARISON prev 9")
    r = plot.parse_log(p)
    np.testing.assert_array_equal(r["size_step"], [0])
    np.testing.assert_array_equal(r["size_prev"], [[1.0, 2.0, 3.0]])


def test_plot_loss_data_equals_log(log, tmp_path):
    path, want = log
    out = tmp_path / "img" / "loss.png"
    fig = plot.plot_loss([path], str(out), smooth=0.5)
    assert out.is_file() and out.stat().st_size > 1000
    assert [f for f in os.listdir(out.parent)] == ["loss.png"]  # no temp file left behind
    lines = {l.get_gid(): l for l in fig.axes[0].lines}
    np.testing.assert_array_equal(lines["synth:train-raw"].get_xdata(), want["step"])
    np.testing.assert_array_equal(lines["synth:train-raw"].get_ydata(), want["train"])
    ema, s = [], None  # hand EMA with factor 0.5
    for y in want["train"]:
        s = y if s is None else 0.5 * s + 0.5 * y
        ema.append(s)
    np.testing.assert_allclose(lines["synth:train"].get_ydata(), ema, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(lines["synth:val"].get_xdata(), want["val_step"])
    np.testing.assert_array_equal(lines["synth:val"].get_ydata(), want["val"])
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["synth train", "synth val"]


def test_plot_loss_two_runs_colours(tmp_path):
    a, b = tmp_path / "run-a.txt", tmp_path / "run-b.txt"
    synthetic_log(a)
    wb = synthetic_log(b, steps=7, partial=False)
    fig = plot.plot_loss([str(a), str(b)], None, smooth=0.0)
    lines = {l.get_gid(): l for l in fig.axes[0].lines}
    assert lines["run-a:train"].get_color() == lines["run-a:val"].get_color()
    assert lines["run-a:train"].get_color() != lines["run-b:train"].get_color()
    np.testing.assert_array_equal(lines["run-b:train"].get_ydata(), wb["train"])  # smooth=0: raw


@pytest.mark.slow
def test_plot_residuals_heatmap_exits(log, tmp_path):
    path, want = log
    r = plot.parse_log(path)
    fig = plot.plot_residuals(r, str(tmp_path / "res.png"))
    assert (tmp_path / "res.png").is_file()
    assert [ax.get_yscale() for ax in fig.axes] == ["log", "log", "linear"]  # next is flat
    lines = {l.get_gid(): l for ax in fig.axes for l in ax.lines}
    for l in range(L):
        np.testing.assert_array_equal(lines[f"prev:{l + 1}"].get_xdata(), want["size_step"])
        np.testing.assert_array_equal(lines[f"prev:{l + 1}"].get_ydata(), [p[l] for p in want["prev"]])
        np.testing.assert_array_equal(lines[f"mid:{l + 1}"].get_ydata(), [m[l] for m in want["mid"]])
        np.testing.assert_array_equal(lines[f"next:{l + 1}"].get_ydata(), [n[l] for n in want["next"]])

    fig = plot.plot_layer_heatmap(path, str(tmp_path / "layers.png"))
    assert (tmp_path / "layers.png").is_file()
    np.testing.assert_array_equal(np.asarray(fig.axes[0].images[0].get_array()),
                                  np.array(want["val_layers"]).T)
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert set(ticks) <= {str(s) for s in want["val_step"]}

    fig = plot.plot_exit_hist(path, str(tmp_path / "exits.png"))
    assert (tmp_path / "exits.png").is_file()
    np.testing.assert_array_equal(np.asarray(fig.axes[0].images[0].get_array()), np.array(want["esd"]).T)


def test_missing_data_raises(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text(_train_line(0, 5, [0, 0, 1]) + "\n")
    with pytest.raises(ValueError, match="SIZE COMPARISON"):
        plot.plot_residuals(str(p))
    with pytest.raises(ValueError, match="val-layers"):
        plot.plot_layer_heatmap(str(p))


@pytest.mark.slow
def test_cli_writes_all_and_errors(log, tmp_path):
    path, _ = log
    out = tmp_path / "figs"
    r = run_py([sys.executable, os.path.join(ROOT, "plot.py"), path, "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["synth-exits.png", "synth-layers.png", "synth-residuals.png",
                                       "synth.png"]
    r = run_py([sys.executable, os.path.join(ROOT, "plot.py"), str(tmp_path / "nope.txt")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr == f"error: log file {tmp_path / 'nope.txt'}: no such file\n"


from conftest import char_text_file, run_py  # noqa: E402


@pytest.mark.slow
def test_real_short_run_log(tmp_path):
    """A log written by train_gpt2.py itself (tiny CPU run, 4 layers): every figure is written and
    the plotted values equal the numbers of its jsonl twin, which the text log (read here with
    independent regexes) prints rounded."""
    import re
    text_file = char_text_file(tmp_path)
    r = run_py([sys.executable, os.path.join(ROOT, "fineweb.py"), "--source", text_file,
                        "--tokenizer", "char", "--out", str(tmp_path / "data"), "--quiet", "--procs", "1"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    vocab = json.load(open(tmp_path / "data" / "meta.json"))["vocab_size"]
    r = run_py([sys.executable, os.path.join(ROOT, "train_gpt2.py"),
                        os.path.join(ROOT, "config", "8-res-attn2.py"), f"--dataset={tmp_path / 'data'}",
                        f"--vocab_size={vocab}", "--n_layer=4", "--n_embd=32", "--n_head=2", "--block_size=32", "--T=32",
                        "--B=4", "--total_batch_size=128", "--max_steps=10", "--warmup_steps=2",
                        "--eval_interval=4", "--eval_iters=1", "--size_interval=3", "--sample_interval=0",
                        "--checkpoint_interval=10", "--device=cpu", "--compile=False", "--early_exit=True",
                        "--run_name=real"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    log = tmp_path / "log" / "real.txt"
    text = log.read_text()
    train = [(int(s), float(v)) for s, v in re.findall(r"^@ (\d+) train ([\d.]+) ,", text, re.M)]
    val = [(int(s), float(v)) for s, v in re.findall(r"^@ (\d+) val ([\d.]+)$", text, re.M)]
    layers = [[float(x) for x in v.split(",")] for v in re.findall(r"^@ \d+ val-layers \[([^\]]*)\]", text, re.M)]
    esd = [[float(x) for x in v.split(",")] for v in re.findall(r"earlystopdict: \[([^\]]*)\]", text)]
    prev = [float(v) for v in re.findall(r"^SIZE COMPARISON prev (\S+) mid", text, re.M)]
    assert [s for s, _ in train] == list(range(10)) and len(val) >= 3 and len(prev) == 4 * 4
    # the plots read the jsonl twin (full precision): the text shows the same numbers rounded
    ev = [json.loads(l) for l in open(tmp_path / "log" / "real.jsonl")]
    tr_ev = [e for e in ev if e["event"] == "train"]
    val_ev = [e for e in ev if e["event"] == "val"]
    assert [(s, v) for s, v in train] == [(e["step"], round(e["loss"], 4)) for e in tr_ev]
    assert [(s, v) for s, v in val] == [(e["step"], round(e["loss"], 4)) for e in val_ev]
    assert layers == [[round(x, 4) for x in e["layer_losses"]] for e in val_ev]
    assert esd == [[round(x, 3) for x in e["earlystopdict"]] for e in tr_ev]
    train = [(e["step"], e["loss"]) for e in tr_ev]
    val = [(e["step"], e["loss"]) for e in val_ev]
    layers = [e["layer_losses"] for e in val_ev]
    esd = [e["earlystopdict"] for e in tr_ev]

    out = tmp_path / "figs"
    r = run_py([sys.executable, os.path.join(ROOT, "plot.py"), str(log), "--out", str(out)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["real-exits.png", "real-layers.png", "real-residuals.png", "real.png"]

    fig = plot.plot_loss([str(log)], None, smooth=0.0)
    lines = {l.get_gid(): l for l in fig.axes[0].lines}
    np.testing.assert_array_equal(lines["real:train"].get_xdata(), [s for s, _ in train])
    np.testing.assert_array_equal(lines["real:train"].get_ydata(), [v for _, v in train])
    np.testing.assert_array_equal(lines["real:val"].get_xdata(), [s for s, _ in val])
    np.testing.assert_array_equal(lines["real:val"].get_ydata(), [v for _, v in val])
    fig = plot.plot_layer_heatmap(str(log))
    np.testing.assert_array_equal(np.asarray(fig.axes[0].images[0].get_array()), np.array(layers).T)
    fig = plot.plot_exit_hist(str(log))
    np.testing.assert_array_equal(np.asarray(fig.axes[0].images[0].get_array()), np.array(esd).T)
    np.testing.assert_allclose(np.array(esd).sum(axis=1), 1.0, atol=3e-3)  # early exit on: sums to 1
    fig = plot.plot_residuals(str(log))
    got = {l.get_gid(): l.get_ydata() for ax in fig.axes for l in ax.lines}
    prev = np.array(prev).reshape(4, 4)  # (reports, layers)
    for l in range(4):
        np.testing.assert_array_equal(got[f"prev:{l + 1}"], prev[:, l])


@pytest.mark.slow
def test_jsonl_when_present_equals_text(tmp_path):
    """parse_log(log/<run>.txt) reads the jsonl twin when it exists: the same steps and series as
    the text (to the text's printed precision), more digits; without the jsonl, the text."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from conftest import make_char_dataset, run_train, tiny_args
    data = make_char_dataset(str(tmp_path / "data"))
    p = run_train(tiny_args(data, tmp_path, "tw", "--share_weights=True", "--early_exit=True",
                            "--exit_threshold=0.05", "--exit_loss=all-layers"))
    assert p.returncode == 0, p.stderr[-2000:]
    txt = tmp_path / "tw.txt"
    from_jsonl = plot.parse_log(str(txt))
    os.replace(tmp_path / "tw.jsonl", tmp_path / "moved.jsonl")
    from_text = plot.parse_log(str(txt))
    assert from_jsonl["name"] == from_text["name"] == "tw"
    for k in ("step", "val_step", "val_layers_step", "size_step", "hella_step"):
        np.testing.assert_array_equal(from_jsonl[k], from_text[k], err_msg=k)
    for k, digits in (("train", 4), ("allloss", 4), ("earlystop", 3), ("norm", 4), ("val", 4),
                      ("val_layers", 4)):
        np.testing.assert_allclose(from_jsonl[k], from_text[k], atol=0.6 * 10 ** -digits, err_msg=k)
    np.testing.assert_allclose(from_jsonl["lr"], from_text["lr"], rtol=6e-5)
    assert not np.array_equal(from_jsonl["train"], from_text["train"])      # not rounded
    np.testing.assert_allclose(np.array(from_jsonl["earlystopdict"]),
                               np.array(from_text["earlystopdict"]), atol=6e-4)
    for k in ("size_prev", "size_mid", "size_next"):
        np.testing.assert_array_equal(from_jsonl[k], from_text[k], err_msg=k)   # full repr in both
    assert from_jsonl["size_prev"].shape == (3, 2)
