# 8-experiments, double attention "res*attn2(x) + attn(x), x + mlp(LN(x))" (all layer loss):
# "the residuals are blowing up the more we train it" -- SIZE COMPARISON prev grows layer over
# layer (2.5 -> 216047 over 12 layers; 1.07 -> 138020 at step 949) while next stays ~1.1.
# Shared weights, every layer's head on the targets, no early exit (the logged earlystop is 0).
run_name = "8-res-attn2"
share_weights = True
block_type = "res-attn2"
ln_learnable = True             # logged: next ~1.10, not sqrt(768/767) = 1.00065
early_exit = False
exit_loss = "all-layers"
max_lr = 6e-4                   # logged: lr:5.9999e-04 at step 949
size_interval = 50
# run settings (README: "Presets: the journal's values and our assumptions")
total_batch_size = 131072       # logged: tok/sec x dt = 2**17 tokens per step in this run's train lines
warmup_steps = 100              # assumed: with min_lr 0 and max_steps 305176 the cosine schedule prints the
                                #   journal's logged lr (5.9999e-04 at step 949, 5.9982e-04 at 3499);
                                #   build-nanogpt's 715 / 19073 steps would print 5.9978e-04 and 5.6993e-04
max_steps = 305176              # assumed: see warmup_steps (40B tokens at 2**17 per step)
min_lr = 0.0                    # assumed: see warmup_steps
