# shakespeare_char: nanoGPT's "baby GPT" on character-level tiny Shakespeare
# (nanoGPT's config/train_shakespeare_char.py and model defaults: 6 layers, 6 heads, 384 wide,
# context 256, dropout 0.2, no biases, exact-erf GELU, tied head), the small setting of seeds
# 002/004. Vanilla GPT (separate blocks, final-layer loss, no early exit).
# Data (not shipped; tinyshakespeare.txt is karpathy/char-rnn's input.txt), nanoGPT's split
# (data/shakespeare_char/prepare.py: train = data[:int(n*0.9)], val = the rest):
#   python fineweb.py --source tinyshakespeare.txt --tokenizer char --val-position last --out data/shakespeare_char_last
# README ("Comparing with nanoGPT") says which numbers are then comparable with nanoGPT's 1.4697.
run_name = "shakespeare_char"
dataset = "data/shakespeare_char_last"
vocab_size = 65                 # tiny Shakespeare's 65 characters (the trainer refuses data with more)
# model
n_layer = 6
n_head = 6
n_embd = 384
block_size = 256
dropout = 0.2
bias = False                    # nanoGPT's train.py default
activation = "gelu-erf"         # nanoGPT's nn.GELU()
share_weights = False
block_type = "pre-ln"
pos_encoding = "learned"
early_exit = False
exit_loss = "final"
# optimisation: batch 64 x 256 tokens, no gradient accumulation
B = 64
T = 256
total_batch_size = 64 * 256
max_lr = 1e-3                   # "with baby networks can afford to go a bit higher"
min_lr = 1e-4
warmup_steps = 100
max_steps = 5000
weight_decay = 0.1
beta2 = 0.99                    # "make a bit bigger because number of tokens per iter is small"
grad_clip = 1.0
eval_interval = 250
eval_iters = 200                # (capped at the val split's 6 batches: all of it is evaluated)
log_interval = 10
