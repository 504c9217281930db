# seed 002 "gpt_v2": gpt with "F.scaled_dot_product_attention instead of torch.matmul attention
# mask tril to speed up the training process" (gpt_v2_exp: final train 0.896, val 1.583). Its
# Head modules are kept; SDPA computes the same softmax(q k^T / sqrt(hd)) v as the masked
# matmul, so here it is the same model as 002-gpt.py (model.py always uses SDPA), kept as its own
# run so the seed's two rows can be reproduced side by side.
# Data (not shipped; tinyshakespeare.txt is karpathy/char-rnn's input.txt), split as the source:
#   python fineweb.py --source tinyshakespeare.txt --tokenizer char --val-position last --out data/shakespeare_char_last
run_name = "002-gpt_v2"
dataset = "data/shakespeare_char_last"  # ng-video-lecture: "first 90% will be train, rest val"
vocab_size = 65                 # tiny Shakespeare's 65 characters
n_layer = 6
n_head = 6
n_embd = 384
block_size = 256
dropout = 0.2
bias = True
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
