# Early-exit Pareto on CPU (minutes): a shared-weight 6-layer char model on tiny Shakespeare,
# every layer's head trained on the targets (exit_loss all-layers, no exit while training), then
#   python eval_exit.py --ckpt log/exit_pareto_cpu/ckpt_000999.pt --data data/shakespeare_char
# sweeps the confidence threshold: average exit depth vs val loss (table + img/*_pareto.png).
# Data (not shipped): python fineweb.py --source tinyshakespeare.txt --tokenizer char --out data/shakespeare_char
run_name = "exit_pareto_cpu"
dataset = "data/shakespeare_char"
vocab_size = 65
n_layer = 6
n_head = 4
n_embd = 128
block_size = 128
dropout = 0.0
share_weights = True
layer_heads = True
early_exit = False
exit_loss = "all-layers"
B = 16
T = 128
total_batch_size = 16 * 128
max_lr = 3e-3
min_lr = 3e-4
warmup_steps = 50
max_steps = 1000
eval_interval = 200
eval_iters = 10
size_interval = 200
sample_interval = 500
sample_tokens = 64
num_samples = 1
sample_prompt = "ROMEO:"
log_interval = 10
checkpoint_interval = 0
keep_checkpoints = 1
head_impl = "naive"
device = "cpu"
compile = False
