# value-identity: "I guess because we add value matrices instead of the embedding itself, the past
# gets destroyed. (How necessary is the value matrix? ... Perhaps the value matrices should just
# be the embedding itself.)" (6-test notes). Each head's values are its slice of the attention
# input (the normalised residual stream), no value matrix (model.py attention "value-identity").
run_name = "value-identity"
share_weights = True            # assumed: as every journal experiment
attention = "value-identity"
layer_heads = True              # assumed: per-layer predictions, as in the observation it follows
early_exit = False              # assumed: the remark is about per-layer predictions, not exits
exit_loss = "all-layers"        # assumed: the 8-experiments' "all layer loss" that follows
max_lr = 6e-4                   # assumed: GPT-2's, the journal's only logged lr (8-experiments)
size_interval = 50
# run settings (README: "Presets: the journal's values and our assumptions")
total_batch_size = 131072       # assumed: 2**17, logged (tok/sec x dt) in every 8-experiments train line
warmup_steps = 100              # assumed: with min_lr 0 and max_steps 305176 the cosine schedule prints the
                                #   journal's logged lr (5.9999e-04 at step 949, 5.9982e-04 at 3499);
                                #   build-nanogpt's 715 / 19073 steps would print 5.9978e-04 and 5.6993e-04
max_steps = 305176              # assumed: see warmup_steps (40B tokens at 2**17 per step)
min_lr = 0.0                    # assumed: see warmup_steps
