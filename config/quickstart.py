# Quickstart: a small GPT-2-tokenised model on the builtin corpus (Python's own docs and sources),
# on CPU in a few minutes. `.venv/bin/python train_gpt2.py config/quickstart.py`
# The corpus is prepared on first use (fineweb.py --source builtin --out data/builtin).
# Writes log/quickstart.txt (+ .jsonl), log/quickstart/ckpt_*.pt, img/quickstart.png.
# This file is Python, executed in train_gpt2.py's constants namespace.
run_name = "quickstart"
dataset = "data/builtin"
dataset_source = "builtin"
tokenizer = "gpt2"

# model: 4 layers x 128 wide, GPT-2 vocabulary (50257 padded to 50304), 128-token context
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
vocab_size = 50304

# batch: 8 x 128 = 1024 tokens per step, no gradient accumulation
B = 8
T = 128
total_batch_size = 1024

max_lr = 3e-3
warmup_steps = 20
max_steps = 150
weight_decay = 0.1

eval_interval = 50
eval_iters = 4
size_interval = 50
sample_interval = 75
sample_tokens = 48
num_samples = 1
sample_prompt = "def "
log_interval = 5
checkpoint_interval = 0         # one checkpoint, at the end
keep_checkpoints = 1

head_impl = "naive"             # plain per-layer head (no recompute); fastest on CPU
device = "cpu"
compile = False
