# The journal's last variant: "y = res + attn(ln(res));  x = y + mlp(ln(res))  i.e. how important
# is it that the output of attention gets fed into the MLP?" (no result recorded yet).
# Attention and MLP both read the block input (a parallel block). Shared weights, every layer's
# head on the targets, no early exit.
run_name = "10-y-mlp-res"
share_weights = True
block_type = "10-y-mlp-res"
ln_learnable = True             # assumed: as the 8-experiments' vanilla run
early_exit = False
exit_loss = "all-layers"        # assumed: as the 8-experiments ("all layer loss")
max_lr = 6e-4                   # assumed: GPT-2's, the journal's only logged lr (8-experiments)
size_interval = 50
# run settings (README: "Presets: the journal's values and our assumptions")
total_batch_size = 131072       # assumed: 2**17, logged (tok/sec x dt) in every 8-experiments train line
warmup_steps = 100              # assumed: with min_lr 0 and max_steps 305176 the cosine schedule prints the
                                #   journal's logged lr (5.9999e-04 at step 949, 5.9982e-04 at 3499);
                                #   build-nanogpt's 715 / 19073 steps would print 5.9978e-04 and 5.6993e-04
max_steps = 305176              # assumed: see warmup_steps (40B tokens at 2**17 per step)
min_lr = 0.0                    # assumed: see warmup_steps
