# shakespeare_char: nanoGPT's "baby GPT" on character-level tiny Shakespeare (6 layers, 6 heads,
# 384 wide, context 256, dropout 0.2; nanoGPT's config/train_shakespeare_char.py), the small
# setting of seeds 002/004. Vanilla GPT (separate blocks, final-layer loss, no early exit).
# Data (not shipped; get tinyshakespeare.txt, e.g. karpathy/char-rnn's input.txt, yourself):
#   python fineweb.py --source path/to/tinyshakespeare.txt --tokenizer char --out data/shakespeare_char
# (a .txt source is one document; the first 10% of the characters become the val split; the
# vocabulary, 65 characters, is stored in data/shakespeare_char/meta.json and sets vocab_size).
run_name = "shakespeare_char"
dataset = "data/shakespeare_char"
vocab_size = 65         # tiny Shakespeare's 65 characters (the trainer refuses data with more)
# model
n_layer = 6
n_head = 6
n_embd = 384
block_size = 256
dropout = 0.2
bias = False            # nanoGPT's train.py default
share_weights = False
block_type = "pre-ln"
pos_encoding = "learned"
early_exit = False
exit_loss = "final"
# optimisation: batch 64 x 256 tokens, no gradient accumulation
B = 64
T = 256
total_batch_size = 64 * 256
max_lr = 1e-3           # "with baby networks can afford to go a bit higher"
min_lr = 1e-4
warmup_steps = 100
max_steps = 5000
weight_decay = 0.1
grad_clip = 1.0
eval_interval = 250
eval_iters = 200
log_interval = 10
