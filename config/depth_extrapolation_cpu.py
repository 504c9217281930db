# Test-time depth on CPU (minutes): a shared-weight 4-layer char model on tiny Shakespeare,
# trained at fixed depth 4 (as below) and with a random depth per step on the same tokens:
#   python train_gpt2.py config/depth_extrapolation_cpu.py --run_name=depth_fixed_cpu
#   python train_gpt2.py config/depth_extrapolation_cpu.py --depth_sampling=uniform --run_name=depth_random_cpu
#   python eval_exit.py --ckpt log/depth_random_cpu/ckpt_000499.pt --depths-vs log/depth_fixed_cpu/ckpt_000499.pt \
#       --depths 1,2,3,4,5,6,7,8 --data data/shakespeare_char --batches 16
# uniform draws d in 1..7 (depth_max 0: 2 * n_layer - 1, mean 4 = the fixed run's depth, so both
# runs cost about the same); eval_exit applies the block 1..8 times (8 = 2L, past both).
# Data (not shipped): python fineweb.py --source tinyshakespeare.txt --tokenizer char --out data/shakespeare_char
run_name = "depth_extrapolation_cpu"
dataset = "data/shakespeare_char"
vocab_size = 65
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
dropout = 0.0
share_weights = True
depth_sampling = "fixed"
B = 16
T = 128
total_batch_size = 16 * 128
max_lr = 3e-3
min_lr = 3e-4
warmup_steps = 50
max_steps = 500
eval_interval = 250
eval_iters = 10
size_interval = 0
sample_interval = 0
log_interval = 10
checkpoint_interval = 0
keep_checkpoints = 1
head_impl = "naive"
device = "cpu"
compile = False
