# seed 004's mini_v1 (v0.0.13): "a mini_v1 configuration that saturates vRAM on my 3090 with the
# same baseline model. (By increasing batch size.)" -- gpt_mini_v0 with a larger batch.
# Data: a Wikipedia dump (the journal: huggingface "wikipedia" 20220301.en), character tokens:
#   python fineweb.py --source wikimedia/wikipedia --name 20231101.en --tokenizer char --val-fraction 0.1 --val-position last --out data/wikipedia_char
# The journal's char vocabulary has 75 symbols (its samples are lower-case); fineweb.py keeps every
# character it meets, so a raw dump needs the same filtering first (the trainer refuses a larger vocabulary).
run_name = "004-mini_v1"
dataset = "data/wikipedia_char"
vocab_size = 75                 # logged (vocab_size)
n_layer = 10                    # logged (n_layers)
n_head = 8                      # logged (n_heads)
n_embd = 512                    # logged (n_embed)
block_size = 256                # logged
dropout = 0.2                   # logged (p_dropout)
bias = True                     # assumed: PyTorch's nn.Linear default
share_weights = False
block_type = "pre-ln"
pos_encoding = "learned"        # assumed: not logged
early_exit = False
exit_loss = "final"
B = 512                         # assumed: 4x gpt_mini_v0's 128; the journal says only "saturates vRAM"
T = 256
total_batch_size = 512 * 256    # assumed: one batch per step (gradient accumulation came in v0.0.18)
max_lr = 1e-3                   # logged (lr)
min_lr = 1e-3                   # logged: one_cycle_scheduler false, so a constant lr (assumed: no other schedule)
warmup_steps = 0                # as min_lr
max_steps = 560000              # assumed: n_epochs 1 (logged); the epoch's ETA was 24 h at 6-7 it/s (v0.0.10)
eval_interval = 2000            # assumed: not logged
