# 6-test (6-test-1): "Rerun the 'confidence of target' experiment with GPT learning rate." --
# the 4-test form with the target token's probability as the confidence (confidence
# "target-prob" for the exit masks too; in generation and HellaSwag, where there is no target,
# it is the probability of the greedy token, p_max).
# Shared weights; exit with probability = confidence (as 3-test); exit loss "6-test".
run_name = "6-test"
share_weights = True
early_exit = True
exit_mode = "sample"            # as 3-test
confidence = "target-prob"
exit_loss = "6-test"
max_lr = 6e-4                   # from the journal: 6-test-1 reruns "with GPT learning rate"
# run settings (README: "Presets: the journal's values and our assumptions")
total_batch_size = 131072       # assumed: 2**17, logged (tok/sec x dt) in every 8-experiments train line
warmup_steps = 100              # assumed: with min_lr 0 and max_steps 305176 the cosine schedule prints the
                                #   journal's logged lr (5.9999e-04 at step 949, 5.9982e-04 at 3499);
                                #   build-nanogpt's 715 / 19073 steps would print 5.9978e-04 and 5.6993e-04
max_steps = 305176              # assumed: see warmup_steps (40B tokens at 2**17 per step)
min_lr = 0.0                    # assumed: see warmup_steps
