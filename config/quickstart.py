# Quickstart: the project's idea in under three CPU minutes. `.venv/bin/python train_gpt2.py config/quickstart.py`
# One transformer block applied n_layer times (shared weights), a head after every layer trained
# with LayerSkip's early-exit loss (every head on the targets, weights growing with depth, the
# deeper heads switched on first), early exit on (a token stops at the first layer whose max-prob
# confidence reaches exit_threshold). Why LayerSkip and not the journal's "all layer loss": at this
# size all-layers makes the shared block best at layer 2-3 and worse after (README); LayerSkip's
# weights keep the deepest layer the best while the early heads stay usable for exits.
# Data: the builtin corpus (Python's own docs and sources, no download) at character level,
# built on first use into data/builtin_char; vocab_size is unset, so it is the data's (221 chars).
# At the end: an early-exit table (threshold -> val CE, average exit depth, decode speedup; the
# machinery of eval_exit.py), log/quickstart.txt (+ .jsonl), log/quickstart/ckpt_*.pt,
# log/quickstart/exit_eval.md, and img/quickstart{,-layers,-exits,-residuals,-pareto}.png.
# This file is Python, executed in train_gpt2.py's constants namespace.
run_name = "quickstart"
dataset = "data/builtin_char"
dataset_source = "builtin"
tokenizer = "char"
shuffle = True                  # the corpus is file after file: mix them

# model: one shared 64-wide block, applied 3 times, a head after each. Why 64 x 3 (exploration
# runs on the builtin corpus, 4 layers, ~110-130 s of training CPU each: 128 wide x 400 steps val
# CE 2.77, 96 x 500 2.62, 64 x 700 2.52): at this size more characters beat more width; and with
# 4 layers the last two heads tie (2.518, 2.519) while with 3 the losses fall with depth.
n_layer = 3
n_head = 4
n_embd = 64
block_size = 128
share_weights = True
layer_heads = True
early_exit = True
exit_threshold = 0.9
exit_loss = "layerskip"

# batch: 16 x 128 = 2048 characters per step, 800 steps (1.6 M characters)
B = 16
T = 128
total_batch_size = 2048

max_lr = 5e-3
min_lr = 3e-4
warmup_steps = 50
max_steps = 800
weight_decay = 0.1

eval_interval = 400              # evaluations at steps 0, 400, 799
eval_iters = 10
size_interval = 400
sample_interval = 400
sample_tokens = 64
num_samples = 1
sample_prompt = "def "
log_interval = 20
checkpoint_interval = 0          # one checkpoint, at the end
keep_checkpoints = 1
exit_table = "0.3,0.5,0.7,0.9"   # eval_exit.py at the end: thresholds of the table

head_impl = "naive"             # plain per-layer heads: fastest on CPU at this vocabulary
device = "cpu"
compile = False
