"""Tokenisation throughput of fineweb.py vs raw tiktoken, per core, on the builtin corpus.

    .venv/bin/python bench/tokenize_bench.py [--max-chars 12000000] [--procs 1 2] [--repeats 3]

For each worker count P: fineweb's own code path (`fineweb.tokenize_documents`: batching, the
process pool, encode_to_numpy, EOT insertion, uint16 packing) against tiktoken's
`encode_ordinary_batch(docs, num_threads=P)` returning lists. Throughput counts the documents'
ordinary tokens (EOTs excluded) per second per core; best of --repeats. Also times a complete
`fineweb.py --source builtin` build (writing shards and manifest). Issue 8 target 5: ratio >= 0.8.
Writes bench/results/tokenize-<host>-<date>.md and .json.
"""
import argparse
import datetime
import json
import os
import socket
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import fineweb  # noqa: E402
import tokenizer  # noqa: E402
from bench import cpu_info  # noqa: E402


def best_time(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-chars", type=int, default=fineweb.BUILTIN_MAX_CHARS)
    p.add_argument("--procs", type=int, nargs="+", default=None,
                   help="worker counts to measure (default: 1, and 2 when there are 2+ CPUs)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    info = cpu_info()
    procs = args.procs or ([1, 2] if info["usable_cpus"] >= 2 else [1])

    docs = list(fineweb.BuiltinSource(args.max_chars).documents())
    enc = tokenizer.gpt2_encoding()
    n_docs = sum(1 for d in docs if d)
    n_chars = sum(len(d) for d in docs)
    print(f"builtin corpus: {len(docs)} documents, {n_chars:,} chars; CPU: {info['cpu']} "
          f"({info['usable_cpus']} usable of {info['cpu_count']}), load {info['loadavg']}")

    rows = []
    for P in procs:
        t_raw, raw = best_time(lambda: enc.encode_ordinary_batch(docs, num_threads=P), args.repeats)
        n_tok = sum(len(x) for x in raw)
        del raw

        def run_fineweb():
            n = 0
            for _, toks, _ in fineweb.tokenize_documents(iter(docs), "gpt2", None, procs=P):
                n += len(toks)
            return n
        t_fw, n_fw = best_time(run_fineweb, args.repeats)
        assert n_fw == n_tok + n_docs, (n_fw, n_tok, n_docs)   # same ids + one EOT per document
        raw_tps, fw_tps = n_tok / t_raw / P, n_tok / t_fw / P
        rows.append({"procs": P, "tokens": n_tok, "raw_s": t_raw, "fineweb_s": t_fw,
                     "raw_tok_s_per_core": raw_tps, "fineweb_tok_s_per_core": fw_tps,
                     "ratio": fw_tps / raw_tps})
        print(f"P={P}: tiktoken encode_ordinary_batch {raw_tps:,.0f} tok/s/core | fineweb "
              f"{fw_tps:,.0f} tok/s/core | ratio {fw_tps / raw_tps:.3f}")

    with tempfile.TemporaryDirectory() as d:    # a complete build, for context
        t = time.perf_counter()
        rc = fineweb.main(["--source", "builtin", "--max-chars", str(args.max_chars), "--out", d,
                           "--procs", str(procs[-1]), "--quiet"])
        t_build = time.perf_counter() - t
        meta = json.load(open(os.path.join(d, "meta.json")))
    assert rc == 0
    build = {"procs": procs[-1], "seconds": t_build, "tokens": meta["n_tokens"],
             "tok_s": meta["n_tokens"] / t_build}
    print(f"full build (--procs {procs[-1]}): {meta['n_tokens']:,} tokens in {t_build:.2f}s")

    import numpy
    import tiktoken
    now = datetime.datetime.now()
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())[:40] or "host"
    result = {"bench": "tokenize", "date": now.isoformat(timespec="seconds"), "host": host,
              "command": " ".join([os.path.basename(sys.executable), "bench/tokenize_bench.py"] +
                                  (argv if argv is not None else sys.argv[1:])),
              "python": sys.version.split()[0], "tiktoken": tiktoken.__version__, "numpy": numpy.__version__,
              **info, "corpus": {"source": "builtin", "max_chars": args.max_chars, "documents": len(docs),
                                 "chars": n_chars}, "rows": rows, "build": build,
              "target": "fineweb tok/s per core >= 0.8 x tiktoken encode_ordinary_batch",
              "met": all(r["ratio"] >= 0.8 for r in rows)}
    md = [f"# Tokenisation throughput — {host}, {result['date']}", "",
          f"`{result['command']}`  ", f"CPU: {info['cpu']} ({info['usable_cpus']} usable of "
          f"{info['cpu_count']}; load avg {info['loadavg']}); Python {result['python']}, tiktoken "
          f"{result['tiktoken']}, numpy {result['numpy']}  ",
          f"Corpus: builtin, {len(docs)} documents, {n_chars:,} chars, best of {args.repeats}", "",
          "| procs | tokens | tiktoken tok/s/core | fineweb tok/s/core | ratio |",
          "|---:|---:|---:|---:|---:|"]
    md += [f"| {r['procs']} | {r['tokens']:,} | {r['raw_tok_s_per_core']:,.0f} | "
           f"{r['fineweb_tok_s_per_core']:,.0f} | {r['ratio']:.3f} |" for r in rows]
    md += ["", f"Full `fineweb.py --source builtin` build (--procs {build['procs']}, writing shards + "
               f"manifest): {build['tokens']:,} tokens in {build['seconds']:.2f}s.",
           f"Target (issue 8, #5): ratio >= 0.8 — {'met' if result['met'] else 'NOT met'}.", ""]
    os.makedirs(args.out_dir, exist_ok=True)
    base = os.path.join(args.out_dir, f"tokenize-{host}-{now:%Y%m%d}")
    fineweb.write_text_atomic(base + ".json", json.dumps(result, indent=1) + "\n")
    fineweb.write_text_atomic(base + ".md", "\n".join(md))
    print(f"wrote {base}.md and .json")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
