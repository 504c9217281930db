# 10-x-escape: "What about  y = res + attn(ln(res));  x = res + mlp(ln(y))" -- "performance seems
# truly worse ... so it is really quite important that the logits directly get the output of the
# attention layer" (img/10-x-escapei.png).
# Shared weights, every layer's head on the targets, no early exit.
run_name = "10-x-escape"
share_weights = True
block_type = "10-x-escape"
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
