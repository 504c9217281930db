# confidence-penalty: the journal's first idea, "block_loss = -log(1 - pr[max]) (the lower the
# confidence, the closer the block_loss is to 0; the higher the confidence, the more negative the
# block_loss)" -- "it still doesn't work very well ... the confidence is being pushed very high on
# early layers, with no bearing on the final layer". Not a named run in the journal.
run_name = "confidence-penalty"
share_weights = True            # assumed: as every journal experiment
early_exit = True               # from the journal: "we should maybe sample as soon as the confidence is high enough"
exit_mode = "threshold"
exit_threshold = 0.9            # assumed: the journal names no threshold
confidence = "max-prob"         # the journal's pr[max]
exit_loss = "confidence-penalty"
max_lr = 6e-4                   # assumed: GPT-2's, the journal's only logged lr (8-experiments)
# run settings (README: "Presets: the journal's values and our assumptions")
total_batch_size = 131072       # assumed: 2**17, logged (tok/sec x dt) in every 8-experiments train line
warmup_steps = 100              # assumed: with min_lr 0 and max_steps 305176 the cosine schedule prints the
                                #   journal's logged lr (5.9999e-04 at step 949, 5.9982e-04 at 3499);
                                #   build-nanogpt's 715 / 19073 steps would print 5.9978e-04 and 5.6993e-04
max_steps = 305176              # assumed: see warmup_steps (40B tokens at 2**17 per step)
min_lr = 0.0                    # assumed: see warmup_steps
