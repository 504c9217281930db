# seed 002 "gpt_v3" with pe_type=sinpe at the grid's smallest size (384 wide, 6 heads, 6 layers:
# the seed's top rows by val loss, 1.506-1.544): makemore's Transformer -- GELU MLP,
# CausalSelfAttention, lm_head without bias -- on char-level tiny Shakespeare, context 256.
# sinpe: fixed sinusoidal position encoding (the seed's best by val loss).
# The whole 54-run grid (pe x n_embd x n_head x n_layer) is config/sweeps/002_pe_size.py.
# Data: see shakespeare_char.py.
run_name = "002-gpt_v3-sinpe"
dataset = "data/shakespeare_char"
vocab_size = 65         # tiny Shakespeare's 65 characters (the trainer refuses data with more)
n_layer = 6
n_head = 6
n_embd = 384
block_size = 256
dropout = 0.2
bias = True             # lm_head has no bias in model.py either way
share_weights = False
block_type = "pre-ln"
pos_encoding = "sinusoidal"
early_exit = False
exit_loss = "final"
B = 64
T = 256
total_batch_size = 64 * 256
max_lr = 3e-4
min_lr = 3e-4
warmup_steps = 0
max_steps = 5000
eval_interval = 500
eval_iters = 200
seed = 1337
