# seed 002 "gpt": the original karpathy/ng-video-lecture model (gpt_exp: final train 0.854,
# val 1.572) with the lecture's hyper-parameters as the seed lists them: char-level tiny
# Shakespeare, 6 layers x 6 heads x 384, context 256, dropout 0.2, batch 64, 5000 iterations at
# a constant 3e-4, seed 1337. The lecture's model: per-head key/query/value Linear modules without
# bias and a projection with bias (attention "per-head"), ReLU MLP, learned positions, an lm_head
# with bias. Not the same: its lm_head is not tied to the token embedding (tied here) and it has
# no dropout on the embeddings (here: dropout 0.2 there too).
# Data (not shipped; tinyshakespeare.txt is karpathy/char-rnn's input.txt), split as the source:
#   python fineweb.py --source tinyshakespeare.txt --tokenizer char --val-position last --out data/shakespeare_char_last
run_name = "002-gpt"
dataset = "data/shakespeare_char_last"  # ng-video-lecture: "first 90% will be train, rest val"
vocab_size = 65                 # tiny Shakespeare's 65 characters
n_layer = 6
n_head = 6
n_embd = 384
block_size = 256
dropout = 0.2
bias = True                     # nn.Linear / nn.LayerNorm defaults in the lecture's code
attention = "per-head"
activation = "relu"
lm_head_bias = True
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
