# 3-test: "incentivize high confidence ... whilst penalizing wrong answers ... Whenever confidence
# is high, there is some probability of terminating the line of thought":
# loss_ = (xe * _confidence * _mask_BT).mean().
# Shared weights; tokens exit with probability = confidence; exit loss "3-test".
run_name = "3-test"
share_weights = True
early_exit = True
exit_mode = "sample"            # our reading of "some probability of terminating"
confidence = "max-prob"
exit_loss = "3-test"
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
