# seed 002 "gpt": the original karpathy/ng-video-lecture model (gpt_exp: final train 0.854,
# val 1.572) -- char-level tiny Shakespeare, 6 layers x 6 heads x 384, context 256, dropout 0.2,
# learned position embedding, batch 64, 5000 iterations at a constant 3e-4, seed 1337.
# Not representable here: ReLU MLP (model.py uses GELU) and the per-head Linear modules (one
# fused c_attn is the same function class). Data: see shakespeare_char.py.
run_name = "002-gpt"
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
max_lr = 3e-4           # constant learning rate: no warmup, min_lr = max_lr
min_lr = 3e-4
warmup_steps = 0
max_steps = 5000
eval_interval = 500
eval_iters = 200
seed = 1337
