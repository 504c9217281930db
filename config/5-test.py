# 5-test: "Definitely punish confidently wrong answers ... Ask the next layer if wrong or not
# wrong": xe_factor_prev = ((_xe_prev - 1) * _just_triggered_prev + 1);
# loss_ = (xe_factor_prev * _confidence * _mask_BT_prev).mean() -- the previous layer's xe /
# just_triggered / mask with the current layer's confidence (journal plot img/5-test.png: "Strangely
# linear, but also outputs 'the' a hundred times").
# Shared weights; exit with probability = confidence (as 3-test); exit loss "5-test".
run_name = "5-test"
share_weights = True
early_exit = True
exit_mode = "sample"            # as 3-test
confidence = "max-prob"
exit_loss = "5-test"
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
