# 0-noearly: "the same as vanilla GPT (but reusing weights) without our early termination
# mechanism" -- one Block applied 12 times, ordinary final-layer loss, no early exit. The
# per-layer heads are on only so the log's allloss / per-layer val losses are comparable with
# the early-exit runs (they do not enter the loss).
run_name = "0-noearly"
share_weights = True
layer_heads = True
early_exit = False
exit_loss = "final"
max_lr = 1.8e-3                 # assumed: not logged; "0-original ... needs a smaller learning rate"
                                #   and 6-test-1 reruns "with GPT learning rate", so these runs used more
                                #   than GPT-2's 6e-4; 3x is our guess
# run settings (README: "Presets: the journal's values and our assumptions")
total_batch_size = 131072       # assumed: 2**17, logged (tok/sec x dt) in every 8-experiments train line
warmup_steps = 100              # assumed: with min_lr 0 and max_steps 305176 the cosine schedule prints the
                                #   journal's logged lr (5.9999e-04 at step 949, 5.9982e-04 at 3499);
                                #   build-nanogpt's 715 / 19073 steps would print 5.9978e-04 and 5.6993e-04
max_steps = 305176              # assumed: see warmup_steps (40B tokens at 2**17 per step)
min_lr = 0.0                    # assumed: see warmup_steps
