# Decode-speed benchmark checkpoint (bench/decode.py, `python bench.py --decode`): a shared-weight
# 8-layer, 384-wide char model on tiny Shakespeare, every layer's head trained on the targets
# (exit_loss all-layers), wide enough that a layer's compute, not Python overhead, dominates a
# CPU decode step. CPU minutes:
#   python fineweb.py --source tinyshakespeare.txt --tokenizer char --out data/shakespeare_char
#   python train_gpt2.py config/decode_bench_cpu.py
# writes log/decode_bench_cpu/ckpt_*.pt, where bench/decode.py looks for it.
run_name = "decode_bench_cpu"
dataset = "data/shakespeare_char"
vocab_size = 65
n_layer = 8
n_head = 6
n_embd = 384
block_size = 128
dropout = 0.0
share_weights = True
layer_heads = True
early_exit = False
exit_loss = "all-layers"
B = 8
T = 128
total_batch_size = 8 * 128
max_lr = 2e-3
min_lr = 2e-4
warmup_steps = 25
max_steps = 250
eval_interval = 125
eval_iters = 8
size_interval = 0
sample_interval = 0
log_interval = 10
checkpoint_interval = 0
keep_checkpoints = 1
head_impl = "naive"
device = "cpu"
compile = False
img_dir = "log/decode_bench_cpu_img"
