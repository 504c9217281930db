"""fineweb.py: shards equal tiktoken's own encoding, manifests, resume, bad input, read_manifest."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import run_py

import fineweb
import tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOT = tokenizer.GPT2_EOT
DOCS = [f"Document {i}: " + " ".join(f"word{j % 17} ünï{j % 5}" for j in range(i * 7 % 60 + 5)) + "\n"
        for i in range(40)]
DOCS[3] = "A literal <|endoftext|> inside a document is ordinary text."
DOCS[5] = ""                                   # empty documents give no tokens (and no EOT)
DOCS[8] = "def f(x):\n    return x ** 2  # ✓ 😀\n"


@pytest.fixture(scope="module")
def enc():
    return tokenizer.gpt2_encoding()


def expected_gpt2(enc, docs):
    """EOT before every non-empty document, then its encode_ordinary ids."""
    out = []
    for d in docs:
        if d:
            out += [EOT] + enc.encode_ordinary(d)
    return np.array(out, dtype=np.uint16)


def run(capsys, *argv):
    """fineweb.main in-process -> (exit code, stdout, stderr)."""
    rc = fineweb.main([str(a) for a in argv] + ["--quiet"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def all_tokens(out):
    """(val tokens, train tokens) of a finished directory, each concatenated in shard order."""
    meta = fineweb.read_manifest(out, check_sha=True)
    cat = lambda split: np.concatenate([fineweb.load_tokens(p) for p in fineweb.shard_paths(meta, split)])
    return cat("val"), cat("train")


def check_manifest(out):
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["complete"] is True and meta["dtype"] == "uint16"
    for s in meta["shards"]:
        data = open(os.path.join(out, s["file"]), "rb").read()
        assert hashlib.sha256(data).hexdigest() == s["sha256"]
        arr = np.load(os.path.join(out, s["file"]))
        assert arr.dtype == np.uint16 and arr.shape == (s["tokens"],)
        assert s["file"] == f"{meta['prefix']}_{s['split']}_{meta['shards'].index(s):06d}.npy"
    assert sorted(os.listdir(out)) == sorted([s["file"] for s in meta["shards"]] + ["meta.json"])
    return meta


def write_jsonl(path, docs, key="text"):
    with open(path, "w") as f:
        for d in docs:
            f.write(json.dumps({key: d, "id": len(d)}) + "\n")


@pytest.mark.slow
def test_jsonl_gpt2_first_shard_val(tmp_path, capsys, enc):
    src, out = tmp_path / "docs.jsonl", tmp_path / "out"
    write_jsonl(src, DOCS)
    rc, stdout, err = run(capsys, "--source", src, "--out", out, "--procs", 1, "--shard-size", 300,
                          "--val-fraction", 0)
    assert rc == 0, err
    meta = check_manifest(out)
    want = expected_gpt2(enc, DOCS)
    n_docs = sum(1 for d in DOCS if d)
    assert len(want) == sum(len(enc.encode_ordinary(d)) for d in DOCS) + n_docs   # one EOT per document
    val, train = all_tokens(out)
    np.testing.assert_array_equal(np.concatenate([val, train]), want)
    assert len(val) == 300 and [s["split"] for s in meta["shards"]][:2] == ["val", "train"]
    assert all(s["tokens"] == 300 for s in meta["shards"][:-1])
    got = np.concatenate([val, train])
    starts = np.cumsum([0] + [len(enc.encode_ordinary(d)) + 1 for d in DOCS if d])[:-1]
    np.testing.assert_array_equal(np.flatnonzero(got == EOT), starts)               # EOT positions
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot"]) == ("gpt2", 50257, 50256)
    assert meta["n_tokens"] == len(want) and meta["n_documents"] == len(DOCS)
    assert meta["source"] == str(src) and meta["prefix"] == "docs"


def test_parquet_val_fraction_two_procs(tmp_path, capsys, enc):
    import pyarrow as pa
    import pyarrow.parquet as pq
    src, out = tmp_path / "docs.parquet", tmp_path / "out"
    pq.write_table(pa.table({"content": DOCS, "n": list(range(len(DOCS)))}), src)
    rc, _, err = run(capsys, "--source", src, "--out", out, "--procs", 2, "--shard-size", 250,
                     "--val-fraction", 0.25, "--text-column", "content")
    assert rc == 0, err
    meta = check_manifest(out)
    want = expected_gpt2(enc, DOCS)
    val, train = all_tokens(out)
    assert len(val) == round(0.25 * len(want))
    np.testing.assert_array_equal(np.concatenate([val, train]), want)
    assert meta["split_tokens"] == {"val": len(val), "train": len(train)}


def test_txt_directory_and_split_lines(tmp_path, capsys, enc):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    files = {"b.txt": DOCS[0], "a.txt": DOCS[1], "sub/c.txt": DOCS[8], "ignored.bin": "x"}
    for name, text in files.items():
        (d / name).write_text(text, encoding="utf-8")
    rc, _, err = run(capsys, "--source", d, "--out", tmp_path / "o1", "--procs", 1, "--shard-size", 64)
    assert rc == 0, err
    val, train = all_tokens(tmp_path / "o1")
    np.testing.assert_array_equal(np.concatenate([val, train]), expected_gpt2(enc, [DOCS[1], DOCS[0], DOCS[8]]))
    assert len(val) == round(0.1 * (len(val) + len(train)))     # local sources default to 10% val

    lines = tmp_path / "lines.txt"
    lines.write_text("first line\nsecond line\n\nfourth line\n", encoding="utf-8")
    rc, _, err = run(capsys, "--source", lines, "--txt-split-lines", "--out", tmp_path / "o2", "--procs", 1)
    assert rc == 0, err
    val, train = all_tokens(tmp_path / "o2")
    np.testing.assert_array_equal(np.concatenate([val, train]),
                                  expected_gpt2(enc, ["first line", "second line", "fourth line"]))
    assert json.load(open(tmp_path / "o2" / "meta.json"))["n_documents"] == 4   # the empty line counts, no tokens


@pytest.mark.parametrize("streaming", [False, True])
def test_default_source_is_fineweb_edu(tmp_path, capsys, monkeypatch, enc, streaming):
    """No --source: load_dataset("HuggingFaceFW/fineweb-edu", name="sample-10BT", split="train"),
    first shard val, edufineweb_* names; resumes through the dataset's skip(). (Hub faked offline.)"""
    import datasets
    calls = []

    def fake_load_dataset(path, name=None, split=None, streaming=False, **kw):
        calls.append((path, name, split, streaming))
        ds = datasets.Dataset.from_dict({"id": list(range(len(DOCS))), "text": DOCS})
        return ds.to_iterable_dataset(num_shards=1) if streaming else ds
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    args = ["--out", tmp_path / "edu", "--procs", 1, "--shard-size", 256] + (["--streaming"] if streaming else [])
    def interrupt(n):
        if n == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(fineweb, "_after_shard_commit", interrupt)
    rc, _, err = run(capsys, *args)
    assert rc == 130 and json.load(open(tmp_path / "edu" / "meta.json"))["shards"][-1]["end"][1] > 0
    monkeypatch.setattr(fineweb, "_after_shard_commit", lambda n: None)
    rc, _, err = run(capsys, *args)
    assert rc == 0 and "resuming" in err, err
    assert calls[0] == ("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", streaming)
    meta = check_manifest(tmp_path / "edu")
    assert meta["shards"][0]["file"] == "edufineweb_val_000000.npy"
    assert meta["shards"][1]["file"] == "edufineweb_train_000001.npy"
    val, train = all_tokens(tmp_path / "edu")
    assert len(val) == 256
    np.testing.assert_array_equal(np.concatenate([val, train]), expected_gpt2(enc, DOCS))


@pytest.mark.slow
def test_default_source_offline_error_subprocess(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    p = run_py([sys.executable, os.path.join(ROOT, "fineweb.py"), "--out", str(tmp_path / "o")],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and not (tmp_path / "o").exists()
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot load Hugging Face dataset 'HuggingFaceFW/fineweb-edu' "
                           "(config sample-10BT, split train)")


def test_char_tokenizer_round_trip(tmp_path, capsys):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak. ✓\n" * 20
    src = tmp_path / "shakespeare.txt"
    src.write_text(text, encoding="utf-8")
    rc, _, err = run(capsys, "--source", src, "--tokenizer", "char", "--out", tmp_path / "o",
                     "--procs", 1, "--shard-size", 500)
    assert rc == 0, err
    meta = check_manifest(tmp_path / "o")
    assert meta["chars"] == "".join(sorted(set(text)))
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot"]) == ("char", len(set(text)), None)
    val, train = all_tokens(tmp_path / "o")
    tok = tokenizer.get_tokenizer("char", meta["chars"])
    assert tok.decode(np.concatenate([val, train]).tolist()) == text
    assert len(val) == round(0.1 * len(text))


def test_builtin_small(tmp_path, capsys, enc):
    rc, stdout, err = run(capsys, "--source", "builtin", "--max-chars", 200_000, "--out", tmp_path / "b",
                          "--procs", 1)
    assert rc == 0, err
    meta = check_manifest(tmp_path / "b")
    docs = list(fineweb.BuiltinSource(200_000).documents())
    assert sum(len(d) for d in docs) == 200_000 and meta["n_documents"] == len(docs)
    val, train = all_tokens(tmp_path / "b")
    np.testing.assert_array_equal(np.concatenate([val, train]), expected_gpt2(enc, docs))
    assert meta["source"] == "builtin" and meta["build"]["max_chars"] == 200_000
    entries = fineweb.BuiltinSource.entries()
    assert entries == fineweb.BuiltinSource.entries()        # deterministic order
    kinds = {k for k, _ in entries}
    assert kinds == {"topic", "file"}
    assert not any("/test/" in p or "site-packages" in p for k, p in entries if k == "file")


def stat_of(out):
    return {n: (os.stat(os.path.join(out, n)).st_ino, os.stat(os.path.join(out, n)).st_mtime_ns)
            for n in os.listdir(out) if n.endswith(".npy")}


def files_bytes(out):
    return {n: open(os.path.join(out, n), "rb").read() for n in sorted(os.listdir(out))}


@pytest.mark.slow
def test_resume_after_interrupt(tmp_path, capsys, monkeypatch):
    src = tmp_path / "docs.jsonl"
    write_jsonl(src, DOCS)
    args = ["--source", src, "--procs", 1, "--shard-size", 97, "--val-fraction", 0.3]
    rc, _, err = run(capsys, *args, "--out", tmp_path / "ref")
    assert rc == 0, err

    def interrupt(n):
        if n == 3:
            raise KeyboardInterrupt
    monkeypatch.setattr(fineweb, "_after_shard_commit", interrupt)
    out = tmp_path / "run"
    rc, _, err = run(capsys, *args, "--out", out)
    assert rc == 130 and err.strip().splitlines()[-1].startswith("error: interrupted")
    meta = json.load(open(out / "meta.json"))
    assert meta["complete"] is False and len(meta["shards"]) == 3
    assert meta["shards"][-1]["end"][1] > 0      # resumes inside a document that straddles shards
    with pytest.raises(fineweb.DataError, match="incomplete"):
        fineweb.read_manifest(out)
    before = stat_of(out)
    monkeypatch.undo()
    rc, _, err = run(capsys, *args, "--out", out)
    assert rc == 0, err
    assert "resuming" in err
    after = stat_of(out)
    assert all(after[n] == before[n] for n in before)           # finished shards not rewritten
    assert files_bytes(out) == files_bytes(tmp_path / "ref")     # identical to an uninterrupted run
    rc, stdout, _ = run(capsys, *args, "--out", out)             # finished: a no-op that says so
    assert rc == 0 and "nothing to do" in stdout and stat_of(out) == after


@pytest.mark.slow
def test_resume_after_kill_subprocess(tmp_path, capsys):
    """End to end: the real script, SIGKILLed after its first shard, resumes to the same bytes."""
    args = [sys.executable, os.path.join(ROOT, "fineweb.py"), "--source", "builtin", "--max-chars", "300000",
            "--shard-size", "20000", "--procs", "1", "--out", str(tmp_path / "run")]
    env = dict(os.environ, FINEWEB_TEST_KILL_AFTER_SHARDS="2")
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == -9
    assert len(json.load(open(tmp_path / "run" / "meta.json"))["shards"]) == 2
    before = stat_of(tmp_path / "run")
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert all(stat_of(tmp_path / "run")[n] == before[n] for n in before)
    rc, _, err = run(capsys, *args[2:-1], tmp_path / "ref")
    assert rc == 0, err
    assert files_bytes(tmp_path / "run") == files_bytes(tmp_path / "ref")


def test_other_build_in_out_dir_is_refused(tmp_path, capsys):
    src = tmp_path / "a.txt"
    src.write_text("some text " * 50)
    rc, _, _ = run(capsys, "--source", src, "--out", tmp_path / "o", "--procs", 1)
    before = files_bytes(tmp_path / "o")
    rc, _, err = run(capsys, "--source", src, "--out", tmp_path / "o", "--procs", 1, "--shard-size", 10)
    assert rc == 2 and err.count("\n") == 1 and "already holds a different build" in err
    assert files_bytes(tmp_path / "o") == before


def _bad_inputs(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    write_jsonl(tmp_path / "blank.jsonl", ["", ""])
    write_jsonl(tmp_path / "other.jsonl", ["x"], key="body")
    (tmp_path / "data.csv").write_text("text\nhello\n")
    (tmp_path / "nodata").mkdir()
    (tmp_path / "nodata" / "readme.md").write_text("hi")
    (tmp_path / "wide.txt").write_text("".join(chr(0x10000 + i) for i in range(70_000)), encoding="utf-8")
    (tmp_path / "small.txt").write_text("tiny corpus")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    return {
        "missing file": (["--source", tmp_path / "missing.txt"], "source path does not exist"),
        "missing dir": (["--source", tmp_path / "missing_dir/"], "source path does not exist"),
        "unknown format": (["--source", tmp_path / "data.csv"], "unknown source format '.csv'"),
        "no files in dir": (["--source", tmp_path / "nodata"], "no .txt/.jsonl/.json/.parquet files"),
        "unknown tokenizer": (["--source", tmp_path / "small.txt", "--tokenizer", "bpe"],
                              "invalid choice: 'bpe' (choose from 'gpt2', 'char')"),
        "empty txt": (["--source", tmp_path / "empty.txt"], "empty corpus"),
        "empty jsonl": (["--source", tmp_path / "blank.jsonl"], "empty corpus"),
        "empty char": (["--source", tmp_path / "empty.txt", "--tokenizer", "char"], "empty corpus"),
        "missing column": (["--source", tmp_path / "other.jsonl"], "column 'text' not in"),
        "char vocab > uint16": (["--source", tmp_path / "wide.txt", "--tokenizer", "char"],
                                "char vocabulary has 70000 distinct characters"),
        "not utf-8": (["--source", tmp_path / "latin1.txt"], "not valid UTF-8"),
        "no train shard": (["--source", tmp_path / "small.txt", "--val-fraction", "0"], "no train shard"),
        "val fraction range": (["--source", tmp_path / "small.txt", "--val-fraction", "1.5"],
                               "argument --val-fraction: must be a finite number in [0, 1), got 1.5"),
    }


def test_bad_inputs_one_line_exit_2_nothing_written(tmp_path, capsys):
    cases = _bad_inputs(tmp_path)
    for name, (argv, msg) in cases.items():
        out = tmp_path / ("out_" + name.replace(" ", "_"))
        try:
            rc, stdout, err = run(capsys, *argv, "--out", out, "--procs", 1, "--shard-size", 1000)
        except SystemExit as e:             # argparse errors exit from parse_args
            rc, err = e.code, capsys.readouterr().err
        assert rc == 2, name
        assert err.count("\n") == 1 and err.startswith("error: ") and msg in err, (name, err)
        assert not out.exists(), name


def test_bad_input_subprocess_unknown_source_format(tmp_path):
    (tmp_path / "data.csv").write_text("text\nhello\n")
    p = run_py([sys.executable, os.path.join(ROOT, "fineweb.py"), "--source", str(tmp_path / "data.csv"),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stdout == "" and not (tmp_path / "o").exists()
    assert p.stderr.startswith("error: unknown source format '.csv'") and p.stderr.count("\n") == 1


# ----------------------------------------------------------------------------- read_manifest

@pytest.fixture
def built(tmp_path, capsys):
    src = tmp_path / "docs.jsonl"
    write_jsonl(src, DOCS)
    rc, _, err = run(capsys, "--source", src, "--out", tmp_path / "d", "--procs", 1, "--shard-size", 200,
                     "--val-fraction", 0)
    assert rc == 0, err
    return tmp_path / "d"


def _edit_meta(d, fn):
    p = d / "meta.json"
    meta = json.load(open(p))
    fn(meta)
    json.dump(meta, open(p, "w"))


def test_read_manifest_ok(built):
    meta = fineweb.read_manifest(built, check_sha=True)
    assert meta["data_dir"] == str(built) and len(fineweb.shard_paths(meta, "val")) == 1
    arr = fineweb.load_tokens(fineweb.shard_paths(meta, "val")[0])
    assert isinstance(arr, np.memmap) and arr.dtype == np.uint16 and arr.shape == (200,)
    assert arr[0] == EOT and not arr.flags.writeable


def test_read_manifest_errors(built, tmp_path):
    val = built / "docs_val_000000.npy"
    train = built / "docs_train_000001.npy"

    def expect(msg, check_sha=False, where=built):
        with pytest.raises(fineweb.DataError, match=msg) as e:
            fineweb.read_manifest(where, check_sha=check_sha)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert str(tmp_path / "nope") in expect("data directory does not exist", where=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    expect("no manifest meta.json", where=tmp_path / "empty")
    good = open(built / "meta.json").read()
    restore = lambda: open(built / "meta.json", "w").write(good)

    open(built / "meta.json", "w").write("{not json")
    expect("manifest is not valid JSON")
    restore()
    _edit_meta(built, lambda m: m.update(complete=False))
    expect("incomplete")
    restore()
    _edit_meta(built, lambda m: m["shards"].__setitem__(0, {**m["shards"][0], "tokens": 199}))
    expect("shard has 200 tokens, manifest says 199")
    restore()
    _edit_meta(built, lambda m: m.update(shards=[s for s in m["shards"] if s["split"] != "val"]))
    expect("no val shard")
    restore()
    _edit_meta(built, lambda m: m.update(shards=[s for s in m["shards"] if s["split"] != "train"]))
    expect("no train shard")
    restore()
    _edit_meta(built, lambda m: m.update(vocab_size=100))
    expect("token id 50256 >= manifest vocab_size 100", check_sha=True)
    restore()

    data = open(train, "rb").read()
    flipped = bytearray(data)
    flipped[-1] ^= 1
    open(train, "wb").write(bytes(flipped))
    fineweb.read_manifest(built)                                  # sizes fine: passes without sha
    assert str(train) in expect("sha256 mismatch", check_sha=True)
    open(train, "wb").write(data[:-10])
    expect("shard unreadable or truncated")
    os.remove(train)
    assert str(train) in expect("shard file missing")
    open(train, "wb").write(data)
    fineweb.read_manifest(built, check_sha=True)
    os.remove(val)
    expect("shard file missing")


@pytest.mark.slow
def test_shard_write_keeps_the_errno_of_a_partial_write(tmp_path):
    """A shard write that the OS cuts short (here a file-size limit, like a disk filling up
    mid-shard) surfaces as an OSError with its errno, so fineweb.main can say "disk full". numpy's
    tofile (what np.save uses) loses it: "N requested and M written", errno None."""
    if not hasattr(__import__("resource"), "RLIMIT_FSIZE"):
        pytest.skip("no RLIMIT_FSIZE on this platform")
    code = (
        "import io, resource, signal, sys, numpy as np\n"
        f"sys.path.insert(0, {ROOT!r})\n"
        "import fineweb\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "arr = np.arange(200000, dtype=np.uint16)\n"
        "a, b = io.BytesIO(), io.BytesIO(); np.save(a, arr); fineweb._save_npy(b, arr)\n"
        "assert a.getvalue() == b.getvalue()            # the same bytes as np.save\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100000, 100000))\n"
        "for name, save in (('ours', fineweb._save_npy), ('numpy', np.save)):\n"
        f"    with open({str(tmp_path / 'x.npy')!r}, 'wb') as f:\n"
        "        try:\n"
        "            save(f, arr); f.flush()\n"
        "        except OSError as e:\n"
        "            print(name, e.errno)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    import errno
    assert r.stdout.split() == ["ours", str(errno.EFBIG), "numpy", "None"], r.stdout


# ----------------------------------------------------------------------------- issue 14: 7, 10

@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize("value", [5, ["a", "list"], {"a": "dict"}])
def test_non_string_text_value_names_the_record(tmp_path, capsys, fmt, value):
    """A text value that is an int, a list or an object: one error line naming the file and the
    record (1-based), exit 2, nothing written (was a TypeError traceback)."""
    rows = [{"text": "fine"}, {"text": "also fine"}, {"text": value}, {"text": "late"}]
    src = tmp_path / f"docs.{fmt}"
    if fmt == "jsonl":
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq
        rows = [{"text": value}] * 3     # a parquet column has one type
        pq.write_table(pa.Table.from_pylist(rows), src)
    for tok in ("gpt2", "char"):
        out = tmp_path / f"out_{tok}"
        rc, stdout, err = run(capsys, "--source", src, "--out", out, "--tokenizer", tok, "--procs", 1)
        n = 3 if fmt == "jsonl" else 1
        assert rc == 2 and err.count("\n") == 1, err
        assert err.startswith(f"error: {src}: record {n}: "), err
        assert "not a string" in err or "cannot read column 'text' as text" in err, err
        assert not out.exists()


def test_edited_source_rebuilds(tmp_path, capsys):
    """The build is keyed on the source's content: editing the file (same path, same size, even
    the same mtime) rebuilds; the result equals a fresh build of the edited file. An unchanged
    source stays a no-op."""
    src = tmp_path / "a.txt"
    src.write_text("hello world " * 400)
    args = ["--source", src, "--procs", 1, "--shard-size", 1000]
    assert run(capsys, *args, "--out", tmp_path / "o")[0] == 0
    st = os.stat(src)
    src.write_text("hello there " * 400)                       # same length
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    rc, stdout, err = run(capsys, *args, "--out", tmp_path / "o")
    assert rc == 0 and f"{src} changed since {tmp_path / 'o'} was built from it: rebuilding" in err
    assert "nothing to do" not in stdout
    assert run(capsys, *args, "--out", tmp_path / "ref")[0] == 0
    assert files_bytes(tmp_path / "o") == files_bytes(tmp_path / "ref")
    rc, stdout, _ = run(capsys, *args, "--out", tmp_path / "o")
    assert rc == 0 and "nothing to do" in stdout


def test_source_edited_while_interrupted_rebuilds(tmp_path, capsys, monkeypatch):
    """A build killed part-way whose source is then edited starts over (it used to resume and
    mix shards of the old text with the new)."""
    src = tmp_path / "docs.txt"
    src.write_text("".join(f"line {i} " * 20 + "\n" for i in range(200)))
    args = ["--source", src, "--txt-split-lines", "--procs", 1, "--shard-size", 2000,
            "--val-fraction", 0, "--tokenizer", "char"]
    monkeypatch.setattr(fineweb, "_after_shard_commit", lambda n: (_ for _ in ()).throw(
        KeyboardInterrupt()) if n == 2 else None)
    assert run(capsys, *args, "--out", tmp_path / "o")[0] == 130
    monkeypatch.undo()
    src.write_text("".join(f"LINE {i} " * 20 + "\n" for i in range(200)))
    assert run(capsys, *args, "--out", tmp_path / "o")[0] == 0
    assert run(capsys, *args, "--out", tmp_path / "ref")[0] == 0
    assert files_bytes(tmp_path / "o") == files_bytes(tmp_path / "ref")


@pytest.mark.parametrize("shard_size", [10_000, 300])
def test_val_position_last_is_nanogpt_shakespeare_char_split(tmp_path, capsys, shard_size):
    """--val-position last: train = data[:int(n*0.9)], val = data[int(n*0.9):] (nanoGPT's
    data/shakespeare_char/prepare.py), across shard boundaries too; first = the opposite end."""
    text = "".join(f"{i % 7} To be, or not to be{'?' * (i % 3)}\n" for i in range(97))
    src = tmp_path / "input.txt"
    src.write_text(text)
    chars = sorted(set(text))
    data = np.array([chars.index(c) for c in text], dtype=np.uint16)
    n = len(data)
    rc, _, err = run(capsys, "--source", src, "--tokenizer", "char", "--val-fraction", "0.1",
                     "--val-position", "last", "--shard-size", shard_size, "--out", tmp_path / "last")
    assert rc == 0, err
    val, train = all_tokens(tmp_path / "last")
    assert np.array_equal(train, data[:int(n * 0.9)]) and np.array_equal(val, data[int(n * 0.9):])
    check_manifest(tmp_path / "last")
    splits = [s["split"] for s in json.load(open(tmp_path / "last" / "meta.json"))["shards"]]
    assert splits == sorted(splits, key=lambda s: s == "val")        # train shards, then val
    rc, _, err = run(capsys, "--source", src, "--tokenizer", "char", "--val-fraction", "0.1",
                     "--shard-size", shard_size, "--out", tmp_path / "first")
    assert rc == 0, err
    val, train = all_tokens(tmp_path / "first")
    k = int(round(0.1 * n))
    assert np.array_equal(val, data[:k]) and np.array_equal(train, data[k:])


def test_val_position_bad_input(tmp_path, capsys):
    src = tmp_path / "input.txt"
    src.write_text("hello world\n" * 50)
    rc, _, err = run(capsys, "--source", src, "--tokenizer", "char", "--val-fraction", "0",
                     "--val-position", "last", "--out", tmp_path / "o")
    assert rc == 2 and err.strip() == "error: --val-position last needs --val-fraction > 0"
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as e:
        fineweb.main(["--source", str(src), "--val-position", "middle", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "--val-position" in capsys.readouterr().err
