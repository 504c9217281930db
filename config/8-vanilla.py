# 8-experiments, "For vanilla GPT (as usual shared weights), all layer loss": prev grows
# linearly with depth (0.88 -> 5.93 by step 1100, 1.59 -> 11.72 by step 4250), "Most of the
# contribution seems to come from the attention step" (mid tracks prev).
# Pre-LN GPT-2 block shared over 12 layers, every layer's head on the targets, no early exit.
run_name = "8-vanilla"
share_weights = True
block_type = "pre-ln"
ln_learnable = True             # logged: next ~1.11-1.39, a learnable LayerNorm
early_exit = False
exit_loss = "all-layers"
max_lr = 6e-4                   # assumed: GPT-2's, the journal's only logged lr (8-experiments)
size_interval = 50
# run settings (README: "Presets: the journal's values and our assumptions")
total_batch_size = 131072       # assumed: 2**17, logged (tok/sec x dt) in every 8-experiments train line
warmup_steps = 100              # assumed: with min_lr 0 and max_steps 305176 the cosine schedule prints the
                                #   journal's logged lr (5.9999e-04 at step 949, 5.9982e-04 at 3499);
                                #   build-nanogpt's 715 / 19073 steps would print 5.9978e-04 and 5.6993e-04
max_steps = 305176              # assumed: see warmup_steps (40B tokens at 2**17 per step)
min_lr = 0.0                    # assumed: see warmup_steps
