"""bench.py --gpu-check: refuses without CUDA (one error line), and its --dry-run runs every
item's plumbing on CPU (fresh worker processes, the memory model, MFU arithmetic, a real
torchrun training run on the builtin corpus with a checkpoint resume) and writes its report."""
import os
import re
import sys

import pytest

from conftest import run_py
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, ROOT)

import gpu_check  # noqa: E402

BENCH = os.path.join(ROOT, "bench.py")


def _run(*args, timeout=60):
    return run_py([sys.executable, BENCH, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: nothing to refuse")
def test_refuses_without_cuda_with_one_error_line(tmp_path):
    p = _run("--gpu-check", "--out", str(tmp_path))
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "error: --gpu-check needs CUDA and torch.cuda.is_available() is False "
        "(--dry-run runs the same items on CPU)"]
    assert os.listdir(tmp_path) == []


def test_unknown_item_is_one_error_line(tmp_path):
    p = _run("--gpu-check", "--dry-run", "--items", "compile,warp", "--out", str(tmp_path))
    assert p.returncode == 2
    assert p.stderr.strip() == ("error: unknown item(s) ['warp']; known: compile, bf16, memory, "
                                "mfu, torchrun")
    assert os.listdir(tmp_path) == []


def test_train_line_regex_matches_the_trainer_format():
    import runlog
    r = {"loss": 3.25, "allloss": 40.0, "confloss": 0.5, "targetloss": -0.25, "earlystop": 0.5,
         "earlystopdict": [0.25, 0.75], "lr": 6e-4, "norm": 1.5, "dt": 0.1, "tok_sec": 1234.5,
         "tflops": 0.01}
    assert gpu_check.TRAIN_LINE.match(runlog.format_train_line(7, r, 1))
    assert gpu_check.TRAIN_LINE.match(runlog.format_train_line(7, r, 2, skipped=3))
    assert not gpu_check.TRAIN_LINE.match(runlog.format_train_line(7, r, 1) + " extra")


def test_max_rel_and_render():
    assert gpu_check._max_rel([2.0, 4.0], [2.02, 4.0]) == pytest.approx(0.01)
    with pytest.raises(RuntimeError, match="differ in length"):
        gpu_check._max_rel([1.0], [1.0, 2.0])
    md = gpu_check.render("cpu", {"name": "X", "torch": "2"}, [("a", True, "fine"), ("b", False, "bad")],
                          "python bench.py --gpu-check --dry-run", True)
    assert "**1/2 PASS**" in md and "| a | PASS | fine |" in md and "| b | FAIL | bad |" in md


@pytest.mark.slow
def test_dry_run_passes_and_writes_the_report(tmp_path):
    """The check's plumbing end to end on CPU: items run, PASS lines, the markdown report.
    One cheap item (the whole dry run takes ~3 min idle, too long for the suite; compile and
    bf16 are proven by test_compile.py / test_autocast.py, torchrun by test_train.py; the mfu
    item's plausibility bound needs a GPU: a CPU's measured GEMM peak is below its MFU)."""
    p = _run("--gpu-check", "--dry-run", "--items", "memory", "--out", str(tmp_path),
             timeout=900)
    lines = [ln for ln in p.stdout.splitlines() if re.match(r"^(PASS|FAIL) ", ln)]
    assert [ln.split(":")[0] for ln in lines] == ["PASS memory"], p.stdout + p.stderr
    assert p.returncode == 0
    (md,) = os.listdir(tmp_path)
    assert re.fullmatch(r"cpu-dry-run-\d{4}-\d\d-\d\d\.md", md)
    text = open(os.path.join(tmp_path, md)).read()
    assert "**1/1 PASS**" in text and text.count("| PASS |") == 1