# seed 002 "gpt_v3" with pe_type=randn at the grid's smallest size (384 wide, 6 heads, 6 layers:
# the seed's top rows by val loss, 1.506-1.544): makemore's Transformer. "The difference between
# gpt_v2 and gpt_v3: relu -> gelu, MultiHeadAttention -> CausalSelfAttention, better positional
# encoding, lm head set bias=False". randn: a learned position table (randomly initialised).
# The whole 54-run grid (pe x n_embd x n_head x n_layer) is config/sweeps/002_pe_size.py.
# Data (not shipped; tinyshakespeare.txt is karpathy/char-rnn's input.txt), split as the source:
#   python fineweb.py --source tinyshakespeare.txt --tokenizer char --val-position last --out data/shakespeare_char_last
run_name = "002-gpt_v3-randn"
dataset = "data/shakespeare_char_last"  # ng-video-lecture: "first 90% will be train, rest val"
vocab_size = 65                 # tiny Shakespeare's 65 characters
n_layer = 6
n_head = 6
n_embd = 384
block_size = 256
dropout = 0.2                   # assumed: not in the seed's gpt_v3 grid; as gpt / gpt_v2
bias = True                     # assumed: makemore's nn.Linear defaults (c_attn, c_proj, MLP)
attention = "gpt2"              # from the seed: CausalSelfAttention (one c_attn for every head)
activation = "gelu"             # from the seed: "relu -> gelu" (makemore's NewGELU, the tanh form)
lm_head_bias = False            # from the seed: "lm head set bias=False"
pos_encoding = "learned"
share_weights = False
block_type = "pre-ln"
early_exit = False
exit_loss = "final"
B = 64
T = 256
total_batch_size = 64 * 256     # batch_size 64 x block_size 256, one batch per step
max_lr = 3e-4                   # learning_rate 3e-4, constant: no warmup, no decay
min_lr = 3e-4
warmup_steps = 0
max_steps = 5000                # max_iters
eval_interval = 500
eval_iters = 200                # (capped at the val split's 6 batches: all of it is evaluated)
seed = 1337                     # torch_seed
weight_decay = 0.01             # assumed: torch AdamW's default, as ng-video-lecture's gpt.py
                                #   (AdamW(model.parameters(), lr)); here only >= 2-D tensors decay
beta2 = 0.999                   # assumed: torch AdamW's default, as ng-video-lecture's gpt.py
grad_clip = 0.0                 # assumed: ng-video-lecture's gpt.py does not clip (norm still logged)
shuffle = True                  # assumed: the nearest here to ng-video-lecture's random windows
