# reward-prev-token: "Alternatively, we can reward tokens that are equal to the next token in the
# previous layer." (after "the third layer is guessing not the third layer, but continuing to
# guess the second layer"). Not a named run in the journal.
run_name = "reward-prev-token"
share_weights = True            # assumed: as every journal experiment
early_exit = True               # assumed: as the runs it follows (6-test)
exit_mode = "threshold"
exit_threshold = 0.9            # assumed: the journal names no threshold
confidence = "max-prob"
exit_loss = "reward-prev-token"
max_lr = 6e-4                   # assumed: GPT-2's, the journal's only logged lr (8-experiments)
# run settings (README: "Presets: the journal's values and our assumptions")
total_batch_size = 131072       # assumed: 2**17, logged (tok/sec x dt) in every 8-experiments train line
warmup_steps = 100              # assumed: with min_lr 0 and max_steps 305176 the cosine schedule prints the
                                #   journal's logged lr (5.9999e-04 at step 949, 5.9982e-04 at 3499);
                                #   build-nanogpt's 715 / 19073 steps would print 5.9978e-04 and 5.6993e-04
max_steps = 305176              # assumed: see warmup_steps (40B tokens at 2**17 per step)
min_lr = 0.0                    # assumed: see warmup_steps
