# 2-test: "losses += _block_loss / self.config.n_layer" with
# "_block_loss = torch.log(1 - torch.exp(-1*_block_loss))", "namely it is positive feedback only.
# As we can see, it doesn't ever get to good training error, but better than noise."
# Shared weights, early termination on (max-prob >= threshold), exit loss "2-test".
run_name = "2-test"
share_weights = True
early_exit = True               # assumed: as 1-noise
exit_mode = "threshold"
exit_threshold = 0.9            # assumed: the journal names no threshold
confidence = "max-prob"
exit_loss = "2-test"
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
