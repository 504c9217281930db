# seed 004's char-gpt3-small (v0.0.15 "gpt3 with character tokenization"): gpt3-small's model on
# character tokens ("the loss immediately started going up" at v0.0.17, then one cycle).
# Data: a Wikipedia dump (the journal: huggingface "wikipedia" 20220301.en), character tokens:
#   python fineweb.py --source wikimedia/wikipedia --name 20231101.en --tokenizer char --val-fraction 0.1 --val-position last --out data/wikipedia_char
# The journal's char vocabulary has 75 symbols (its samples are lower-case); fineweb.py keeps every
# character it meets, so a raw dump needs the same filtering first (the trainer refuses a larger vocabulary).
run_name = "004-char-gpt3-small"
dataset = "data/wikipedia_char"
vocab_size = 75                 # assumed: gpt_mini_v0's logged char vocabulary
n_layer = 12                    # assumed: GPT-3 Small's (Brown et al. 2020, Table 2.1), as the name says
n_head = 12                     # assumed: GPT-3 Small's
n_embd = 768                    # assumed: GPT-3 Small's
block_size = 2048               # assumed: GPT-3's context
dropout = 0.2                   # assumed: the project's only logged p_dropout (gpt_mini_v0)
bias = True                     # assumed: PyTorch's nn.Linear default
share_weights = False
block_type = "pre-ln"
pos_encoding = "learned"
early_exit = False
exit_loss = "final"
B = 8                           # assumed: "saturate vRAM" on a 24 GB 3090; not logged
T = 2048
total_batch_size = 8 * 2048     # assumed: one batch per step (the "larger simulated batch" is a later config)
max_lr = 6e-4                   # logged: "what I was using previously (6e-4)" (also GPT-3 Small's)
min_lr = 6e-4                   # assumed: constant, as gpt_mini_v0 (one cycle came in v0.0.17: --lr_schedule=onecycle)
warmup_steps = 0                # as min_lr
max_steps = 20000               # assumed: not logged ("Aiming for a 7-8 hour training run")
eval_interval = 1000            # assumed: not logged
