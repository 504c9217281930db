"""lm-evaluation-harness, offline: a tiny local multiple-choice task and a tiny generation task
(task yamls over jsonl files written here; the hub is never contacted).

- the early-exit adapter at threshold > 1 gives the loglikelihoods of our own HellaSwag scoring
  (hellaswag.score_example) and of `lm_eval --model hf` on the export_hf.py directory;
- at threshold 0 every token exits at layer 1 (average depth 1 < n_layer);
- the stock `lm_eval` CLI runs the exported model, and lm_eval_exit.py prints depth beside metrics
  (its bad arguments are cases of tests/test_bad_args.py).
Every test runs lm-eval in a subprocess with HF_HUB_OFFLINE / HF_DATASETS_OFFLINE and a private
HF_HOME, so nothing is read from or written to the user's caches.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")
pytestmark = pytest.mark.slow        # each test starts lm-eval (imports ~5 s CPU)

MC_DOCS = [
    {"ctx": "The cat sat on the", "endings": ["mat.", "moon and sang loudly.", "idea", "blue"],
     "label": 0},
    {"ctx": "She opened the door and", "endings": ["walked in.", "the of and", "sky", "ran"],
     "label": 0},
    {"ctx": "Water boils at one hundred", "endings": ["degrees.", "cats", "later", "the"],
     "label": 0},
]
GEN_DOCS = [{"ctx": "Once upon a time", "answer": " there"},
            {"ctx": "Hello, my name is", "answer": " John"}]
ROLL_DOCS = [{"ctx": "", "text": "A short document about cats and the mats they sit on."},
             {"ctx": "", "text": "Another one, with numbers 123 and punctuation!"}]


def write_tasks(d):
    """tiny_mc (multiple_choice, acc/acc_norm), tiny_gen (generate_until, exact_match) and
    tiny_roll (loglikelihood_rolling, perplexities)."""
    os.makedirs(d, exist_ok=True)
    for name, docs in (("tiny_mc", MC_DOCS), ("tiny_gen", GEN_DOCS), ("tiny_roll", ROLL_DOCS)):
        with open(os.path.join(d, f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps(doc) + "\n" for doc in docs)
    def yaml(name, body):
        head = (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                f"    test: {os.path.join(d, name + '.jsonl')}\ntest_split: test\n"
                'doc_to_text: "{{ctx}}"\n')
        with open(os.path.join(d, f"{name}.yaml"), "w") as f:
            f.write(head + body)
    yaml("tiny_mc", 'output_type: multiple_choice\ndoc_to_choice: "{{endings}}"\n'
                    'doc_to_target: "{{label}}"\nmetric_list:\n  - metric: acc\n'
                    "  - metric: acc_norm\n")
    yaml("tiny_gen", 'output_type: generate_until\ndoc_to_target: "{{answer}}"\n'
                     'generation_kwargs:\n  until: ["\\n", "."]\n  max_gen_toks: 5\n'
                     "  do_sample: false\nmetric_list:\n  - metric: exact_match\n")
    yaml("tiny_roll", 'output_type: loglikelihood_rolling\ndoc_to_target: "{{text}}"\n'
                      "metric_list:\n  - metric: word_perplexity\n")
    return d


def offline_env(tmp):
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                HF_HOME=os.path.join(tmp, "hf_home"), OMP_NUM_THREADS="1", PYTHONPATH=ROOT,
                TOKENIZERS_PARALLELISM="false")


def run_py(code, tmp, timeout=600):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=str(tmp),
                       env=offline_env(str(tmp)), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A GPT-2-tokenised tiny checkpoint (4 layers), its HF export and the task directory."""
    from test_export_hf import save_ckpt
    import export_hf
    d = tmp_path_factory.mktemp("lmeval")
    ckpt = str(d / "ckpt.pt")
    save_ckpt(ckpt, tokenizer="gpt2", n_layer=4, vocab_size=50304)
    assert export_hf.main(["--ckpt", ckpt, "--out", str(d / "hf")]) == 0
    return d, ckpt, str(d / "hf"), write_tasks(str(d / "tasks"))


COMPARE = """
import contextlib, io, json, sys, torch
import lm_eval, lm_eval_exit, hellaswag, tokenizer
from lm_eval.tasks import TaskManager
ckpt, hf_dir, tasks, out = {args}
tm = TaskManager(include_path=tasks)
TASKS = ["tiny_mc", "tiny_gen", "tiny_roll"]

def lls(res):
    return {{f"{{s['doc_id']}}/{{i}}": r[0] for s in res["samples"]["tiny_mc"]
             for i, r in enumerate(s["filtered_resps"])}}

def summary(res):
    return {{"lls": lls(res), "info": res["config"],
             "gen": [s["filtered_resps"] for s in res["samples"]["tiny_gen"]],
             "acc": res["results"]["tiny_mc"]["acc,none"],
             "ppl": res["results"]["tiny_roll"]["word_perplexity,none"],
             "request0": res["samples"]["tiny_mc"][0]["arguments"][0]}}

got = {{}}
for th in (1.01, 0.0):
    got[str(th)] = summary(lm_eval.simple_evaluate(
        model="earlyexit", model_args=f"ckpt={{ckpt}},threshold={{th}}", tasks=TASKS,
        task_manager=tm, bootstrap_iters=0, log_samples=True, batch_size=3))
got["hf"] = summary(lm_eval.simple_evaluate(
    model="hf", model_args=f"pretrained={{hf_dir}}", device="cpu", tasks=TASKS, task_manager=tm,
    bootstrap_iters=0, log_samples=True, batch_size=2))
model, _ = __import__("export_hf").load(ckpt)
tok = tokenizer.get_tokenizer("gpt2")
ours = {{}}
for doc in {docs}:
    s, _, _ = hellaswag.score_example(model, doc, "cpu", tok)
    ours.update({{f"{{len(ours) // 4}}/{{i}}": -float(v) for i, v in enumerate(s)}})
got["ours"] = ours
# the script's CLI (in this process: lm-eval is imported once)
o, e = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
    rc = lm_eval_exit.main(["--ckpt", ckpt, "--thresholds", "0,1.01", "--tasks", "tiny_mc,tiny_gen",
                            "--include_path", tasks, "--device", "cpu", "--out", out + ".rows"])
got["cli"] = {{"rc": rc, "stdout": o.getvalue(), "stderr": e.getvalue()}}
got["cli"]["rows"] = json.load(open(out + ".rows"))["rows"]
json.dump(got, open(out, "w"), default=str)
"""


@pytest.fixture(scope="module")
def compare(setup):
    """Loglikelihoods, generations and exit depths of the adapter at thresholds 1.01 and 0, of
    `--model hf` on the export and of hellaswag.score_example; lm_eval_exit.main's output."""
    d, ckpt, hf_dir, tasks = setup
    out = str(d / "compare.json")
    run_py(COMPARE.format(args=[ckpt, hf_dir, tasks, out], docs=MC_DOCS), d)
    with open(out) as f:
        return json.load(f)


def test_adapter_matches_our_eval_and_hf_and_exits_earlier(compare):
    full, early, hf, ours = compare["1.01"], compare["0.0"], compare["hf"], compare["ours"]
    assert sorted(ours) == sorted(full["lls"]) == sorted(hf["lls"]) and len(ours) == 12
    for k in ours:
        assert abs(full["lls"][k] - ours[k]) < 1e-4, (k, full["lls"][k], ours[k])
        assert abs(hf["lls"][k] - ours[k]) < 1e-4, (k, hf["lls"][k], ours[k])
    assert full["request0"] == [MC_DOCS[0]["ctx"], " " + MC_DOCS[0]["endings"][0]]
    assert full["acc"] == hf["acc"]
    assert full["gen"] == hf["gen"]                    # greedy text, full depth == exported model
    assert abs(full["ppl"] / hf["ppl"] - 1) < 1e-5      # rolling loglikelihood
    assert early["ppl"] != full["ppl"]
    info = full["info"]
    assert (info["exit_threshold"], info["n_layer"], info["avg_exit_depth"]) == (1.01, 4, 4.0)
    assert info["avg_exit_depth_by_task"] == {"tiny_mc": 4.0, "tiny_gen": 4.0, "tiny_roll": 4.0}
    e = early["info"]
    assert e["avg_exit_depth"] == 1.0 and e["avg_exit_depth_by_task"]["tiny_gen"] == 1.0
    assert max(abs(early["lls"][k] - ours[k]) for k in ours) > 1e-2   # layer-1 heads differ


def test_cli_table_shows_depth_beside_metrics(compare):
    cli = compare["cli"]
    assert cli["rc"] == 0, cli["stderr"][-2000:]
    got = {(r["threshold"], r["task"], r["metric"]): r["avg_exit_depth"] for r in cli["rows"]}
    assert got == {(0.0, "tiny_gen", "exact_match"): 1.0, (0.0, "tiny_mc", "acc"): 1.0,
                   (0.0, "tiny_mc", "acc_norm"): 1.0, (1.01, "tiny_gen", "exact_match"): 4.0,
                   (1.01, "tiny_mc", "acc"): 4.0, (1.01, "tiny_mc", "acc_norm"): 4.0}
    acc = {r["threshold"]: r["value"] for r in cli["rows"] if r["metric"] == "acc"}
    assert acc[1.01] == compare["1.01"]["acc"] and acc[0.0] == compare["0.0"]["acc"]
    assert "| 0 | tiny_mc | acc |" in cli["stdout"]
    assert "| 1.01 | tiny_gen | exact_match |" in cli["stdout"]


def test_stock_lm_eval_cli_runs_the_export(setup, compare):
    """README's command, on the local task: `lm_eval --model hf --model_args pretrained=DIR`."""
    d, _, hf_dir, tasks = setup
    lm_eval_bin = os.path.join(os.path.dirname(sys.executable), "lm_eval")
    r = subprocess.run([lm_eval_bin, "--model", "hf", "--model_args", f"pretrained={hf_dir}",
                        "--tasks", "tiny_mc", "--include_path", tasks, "--device", "cpu",
                        "--output_path", str(d / "stock")], cwd=str(d),
                       env=offline_env(str(d)), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "|tiny_mc|" in r.stdout.replace(" ", "") and "acc_norm" in r.stdout
    found = [os.path.join(dp, f) for dp, _, fs in os.walk(d / "stock") for f in fs
             if f.startswith("results") and f.endswith(".json")]
    assert len(found) == 1
    with open(found[0]) as f:
        assert json.load(f)["results"]["tiny_mc"]["acc,none"] == compare["hf"]["acc"]
