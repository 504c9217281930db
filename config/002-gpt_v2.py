# seed 002 "gpt_v2": gpt with "F.scaled_dot_product_attention instead of torch.matmul attention
# mask tril to speed up the training process" (gpt_v2_exp: final train 0.896, val 1.583).
# model.py always uses scaled_dot_product_attention, so this is the same model as 002-gpt.py;
# kept as its own run name so the seed's two rows can be reproduced side by side.
run_name = "002-gpt_v2"
dataset = "data/shakespeare_char"
vocab_size = 65         # tiny Shakespeare's 65 characters (the trainer refuses data with more)
n_layer = 6
n_head = 6
n_embd = 384
block_size = 256
dropout = 0.2
bias = True
share_weights = False
block_type = "pre-ln"
pos_encoding = "learned"
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
