"""lm-evaluation-harness on a checkpoint *with early exit*: task metrics beside average exit depth.

    python lm_eval_exit.py --ckpt log/<run>/ckpt_019072.pt --thresholds 0.5,0.9,1.01 \
        --tasks hellaswag,arc_easy,piqa,lambada_openai [--limit 500] [--out results.json]

One lm-eval run per threshold (threshold rule on the checkpoint's confidence; > 1 never exits,
i.e. exactly full depth; "none" = early exit off). Prints one table row per task metric with the
average exit depth of that task's scored tokens (loglikelihood: the continuation's predictions;
generation: every generated token), and writes all of it as JSON with --out.

The adapter is also registered with lm-eval as model "earlyexit", for use from Python:
    import lm_eval, lm_eval_exit
    lm_eval.simple_evaluate(model="earlyexit", model_args="ckpt=...,threshold=0.9", tasks=[...])
(`lm_eval --model earlyexit` on the command line does not import this file; use this script.)
An exported fixed-depth model runs under the stock CLI: see export_hf.py.
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

import lm_eval.models  # noqa: F401  lm-eval's own names ("hf", ...) first: get_model only
                      # fills an empty registry, so registering ours alone would hide them
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval import utils as lm_utils


def parse_threshold(value):
    """None / "none" -> None (early exit off); otherwise a finite float >= 0."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    t = float(value)
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"threshold must be a finite number >= 0 or none, got {value!r}")
    return t


@torch.no_grad()
def exit_logits(model, idx, threshold):
    """idx (B, T) -> (logits (B, T, V) float32 at each token's exit layer, depth (B, T) 1-based).
    Threshold rule with exited tokens' state propagated to deeper layers (CALM), as at
    inference (eval_exit.py, generate); threshold None runs the plain full-depth forward."""
    L = model.config.n_layer
    if threshold is None:
        logits = model(idx)[0]
        return logits.float(), torch.full(idx.shape, float(L), device=idx.device)
    r = model._trunk(idx, early=True, threshold=threshold, mode="threshold", heads_on=True,
                     propagate=True)
    return model.lm_head(r["h"]).float(), r["depth"]


class DepthTally:
    """Sum of exit depths and token counts, per task and overall."""

    def __init__(self):
        self.by_task = {}

    def add(self, task, depth_sum, n):
        s = self.by_task.setdefault(task or "?", [0.0, 0])
        s[0] += float(depth_sum)
        s[1] += int(n)

    def mean(self, task=None):
        rows = self.by_task.values() if task is None else [self.by_task.get(task, [0.0, 0])]
        tot, n = sum(r[0] for r in rows), sum(r[1] for r in rows)
        return tot / n if n else float("nan")


@register_model("earlyexit")
class EarlyExitLM(TemplateLM):
    """lm-eval LM over our GPT with early exit at `threshold` (None: off).
    model_args: ckpt=PATH, threshold=FLOAT|none, batch_size, device; or pass model= and tok=
    objects directly (a loaded GPT and a tokenizer with encode/decode/eot)."""

    def __init__(self, ckpt=None, threshold=None, batch_size=1, device=None, model=None,
                 tok=None, max_batch_size=None, **kwargs):
        super().__init__()
        if model is None:
            if ckpt is None:
                raise ValueError("earlyexit needs model_args ckpt=PATH")
            import export_hf
            import tokenizer as tokenizers
            model, info = export_hf.load(ckpt)
            tok = tokenizers.get_tokenizer(info.get("name", "gpt2"), info.get("chars"))
        if model.config.confidence == "target-prob":
            raise ValueError("confidence 'target-prob' needs the targets: no early exit at inference")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(device).eval()
        self.tok = tok
        self.threshold = parse_threshold(threshold)
        self.batch_size_per_gpu = int(batch_size) if str(batch_size).isdigit() else 1
        self._device = torch.device(device)
        self.max_length = model.config.block_size
        self.depths = DepthTally()

    # -- tokenizer ----------------------------------------------------------------------------

    @property
    def eot_token_id(self):
        eot = getattr(self.tok, "eot", None)
        if eot is None:           # char vocabularies have no end-of-text: condition on newline
            eot = self.tok.encode("\n")[0] if "\n" in getattr(self.tok, "chars", "") else 0
        return eot

    def tok_encode(self, string, add_special_tokens=None, **kwargs):
        return self.tok.encode(string)

    def tok_decode(self, ids):
        return self.tok.decode(ids)

    @property
    def tokenizer_name(self):
        return type(self.tok).__name__

    # -- scoring ------------------------------------------------------------------------------

    def _score(self, rows):
        """rows [(input ids, continuation ids)] (inputs <= block_size, ending before the last
        continuation token) -> [(logprob, is_greedy, depth sum, n)]."""
        T = max(len(inp) for inp, _ in rows)
        idx = torch.zeros(len(rows), T, dtype=torch.long)
        for i, (inp, _) in enumerate(rows):
            idx[i, :len(inp)] = torch.tensor(inp)
        logits, depth = exit_logits(self.model, idx.to(self._device), self.threshold)
        logp = F.log_softmax(logits, dim=-1)
        out = []
        for i, (inp, cont) in enumerate(rows):
            n = len(cont)
            lp = logp[i, len(inp) - n:len(inp)]                           # (n, V)
            tgt = torch.tensor(cont, device=lp.device)
            out.append((float(lp.gather(1, tgt[:, None]).sum()),
                        bool((lp.argmax(-1) == tgt).all()),
                        float(depth[i, len(inp) - n:len(inp)].sum()), n))
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm=False, tasks=None, **kwargs):
        """requests [(key, context ids, continuation ids)] -> [(logprob, is_greedy)]."""
        rows = []
        for _, ctx, cont in requests:
            whole = (ctx + cont)[-(self.max_length + 1):]
            rows.append((whole[:-1], cont[-self.max_length:]))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # similar lengths batch
        res = [None] * len(rows)
        bs = self.batch_size_per_gpu
        for s in range(0, len(order), bs):
            chunk = order[s:s + bs]
            for i, r in zip(chunk, self._score([rows[i] for i in chunk])):
                res[i] = r
                self.depths.add(None if tasks is None else tasks[i], r[2], r[3])
        return [(r[0], r[1]) for r in res]

    def loglikelihood(self, requests, disable_tqdm=False):
        """TemplateLM's tokenisation, then our scoring with per-task exit-depth bookkeeping."""
        pairs = []
        for req in requests:
            context, continuation = req.args
            if context == "":        # condition on the end-of-text token (as TemplateLM does)
                cont = self.tok_encode(continuation)
                ctx, cont = (([self.prefix_token_id], cont) if cont[:1] != [self.prefix_token_id]
                             else (cont[:1], cont[1:]))
                pairs.append(((context, continuation), ctx, cont))
            else:
                pairs.append(((context, continuation), *self._encode_pair(context, continuation)))
        return self._loglikelihood_tokens(pairs, tasks=[r.task_name for r in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        out = []
        for req in requests:
            (string,) = req.args
            windows = [lm_utils.make_disjoint_window(w) for w in lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            scores = self._loglikelihood_tokens([(None, c, p) for c, p in windows],
                                                tasks=[req.task_name] * len(windows))
            out.append(sum(s for s, _ in scores))
        return out

    def generate_until(self, requests, disable_tqdm=False):
        """Greedy (or sampled, from gen_kwargs) KV-cached decoding with early exit, batch 1;
        the text is cut at the first stop string of `until`."""
        out = []
        for req in requests:
            context, kw = req.args
            kw = dict(kw or {})
            until = kw.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            n_new = int(kw.get("max_gen_toks", 256))
            temperature = float(kw.get("temperature", 0.0)) if kw.get("do_sample") else 0.0
            ids = self.tok_encode(context) or [self.prefix_token_id]
            ids = ids[-max(1, self.max_length - n_new):]
            idx = torch.tensor([ids], dtype=torch.long, device=self._device)
            extra = {} if self.threshold is None else {"exit_threshold": self.threshold}
            new = self.model.generate(idx, n_new, temperature=temperature, **extra)[0, len(ids):]
            depth = (self.model.last_generate_stats.get("avg_exit_depth")
                     if self.threshold is not None else float(self.model.config.n_layer))
            self.depths.add(req.task_name, depth * len(new), len(new))
            new = new.tolist()
            if getattr(self.tok, "eot", None) in new:
                new = new[:new.index(self.tok.eot)]
            text = self.tok_decode(new)
            for stop in until:
                if stop and stop in text:
                    text = text[:text.index(stop)]
            out.append(text)
        return out

    def get_model_info(self):
        """Lands in lm-eval's results["config"] (read after evaluation)."""
        return {"exit_threshold": self.threshold, "n_layer": self.model.config.n_layer,
                "avg_exit_depth": self.depths.mean(),
                "avg_exit_depth_by_task": {t: self.depths.mean(t) for t in self.depths.by_task}}


# ---------------------------------------------------------------------------------------------

def evaluate(model, tok, thresholds, tasks, include_path=None, limit=None, num_fewshot=None,
             batch_size=1, device="cpu"):
    """One lm-eval run per threshold -> list of result rows
    {threshold, task, metric, value, stderr, avg_exit_depth}."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    tm = TaskManager(include_path=include_path) if include_path else TaskManager()
    rows = []
    for th in thresholds:
        lm = EarlyExitLM(model=model, tok=tok, threshold=th, batch_size=batch_size, device=device)
        res = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=tm, limit=limit,
                                      num_fewshot=num_fewshot, bootstrap_iters=0,
                                      log_samples=False)
        for task, metrics in sorted(res["results"].items()):
            for key, value in sorted(metrics.items()):
                name, comma, filt = key.partition(",")          # "acc,none": metric,filter
                if not comma or not isinstance(value, (int, float)) or name.endswith("_stderr"):
                    continue
                stderr = metrics.get(f"{name}_stderr,{filt}")
                rows.append({"threshold": th, "task": task, "metric": name, "filter": filt,
                             "value": float(value),
                             "stderr": stderr if isinstance(stderr, (int, float)) else None,
                             "avg_exit_depth": lm.depths.mean(task),
                             "n_layer": model.config.n_layer})
    return rows


def format_table(rows):
    lines = ["| threshold | task | metric | value | avg exit depth | depth / n_layer |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        th = "none" if r["threshold"] is None else format(r["threshold"], "g")
        lines.append(f"| {th} | {r['task']} | {r['metric']} | {r['value']:.4f} "
                     f"| {r['avg_exit_depth']:.3f} | {r['avg_exit_depth'] / r['n_layer']:.3f} |")
    return "\n".join(lines)


def threshold_list(text):
    """argparse type: comma-separated thresholds (see parse_threshold)."""
    import argparse
    try:
        ths = [parse_threshold(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not ths:
        raise argparse.ArgumentTypeError(f"no thresholds in {text!r}")
    return ths


def main(argv=None):
    import cli
    p = cli.Parser(prog="lm_eval_exit.py", description=cli.doc_head(__doc__))
    p.add_argument("--ckpt", required=True, help="trainer checkpoint log/<run>/ckpt_XXXXXX.pt")
    p.add_argument("--thresholds", type=threshold_list, default="1.01",
                   help="comma-separated exit thresholds (> 1: full depth; none: exit off)")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    p.add_argument("--include_path", default=None, help="extra task yaml directory (lm-eval's)")
    p.add_argument("--limit", type=cli.float_arg(0), default=None,
                   help="examples per task (< 1: a fraction; lm-eval's)")
    p.add_argument("--num_fewshot", type=cli.int_arg(0), default=None)
    p.add_argument("--batch_size", type=cli.int_arg(1, 1 << 16), default=8)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    import export_hf
    import tokenizer as tokenizers
    try:
        cli.check_input_file(args.ckpt, "--ckpt")
        if args.include_path is not None and not os.path.isdir(args.include_path):
            raise cli.UsageError(f"--include_path {args.include_path}: not a directory")
        if args.out:
            cli.check_output(args.out, "--out")
        device = str(cli.check_device(args.device))
        tasks = [t for t in args.tasks.split(",") if t.strip()]
        if not tasks:
            raise cli.UsageError(f"--tasks {args.tasks!r}: no task names")
        model, info = export_hf.load(args.ckpt)
        tok = tokenizers.get_tokenizer(info.get("name", "gpt2"), info.get("chars"))
    except ValueError as e:             # cli.UsageError, ExportError (unreadable checkpoint)
        cli.fail(e)
    limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
    rows = evaluate(model, tok, args.thresholds, tasks, include_path=args.include_path,
                    limit=limit, num_fewshot=args.num_fewshot, batch_size=args.batch_size,
                    device=device)
    print(format_table(rows))
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"ckpt": os.path.basename(args.ckpt), "rows": rows}, f, indent=1)
        os.replace(tmp, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
