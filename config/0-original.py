# 0-original: '"0-original" does not re-use any weights, and needs a smaller learning rate to
# converge properly' -- 12 separate blocks, ordinary final-layer loss; per-layer heads on for
# logging only.
run_name = "0-original"
share_weights = False
layer_heads = True
early_exit = False
exit_loss = "final"
max_lr = 6e-4                   # assumed: GPT-2's, "smaller" than the shared-weight runs' (assumed 1.8e-3)
# run settings (README: "Presets: the journal's values and our assumptions")
total_batch_size = 131072       # assumed: 2**17, logged (tok/sec x dt) in every 8-experiments train line
warmup_steps = 100              # assumed: with min_lr 0 and max_steps 305176 the cosine schedule prints the
                                #   journal's logged lr (5.9999e-04 at step 949, 5.9982e-04 at 3499);
                                #   build-nanogpt's 715 / 19073 steps would print 5.9978e-04 and 5.6993e-04
max_steps = 305176              # assumed: see warmup_steps (40B tokens at 2**17 per step)
min_lr = 0.0                    # assumed: see warmup_steps
