# 8-experiments, "x = x + self.attn(x)  x = x + self.mlp(self.ln_2(x)) (all layer loss)
# (note, using x instead of res)", read with x = ln_1(res) (model.py "ln-x-attn"): the carried
# stream restarts from the normalised input each layer, matching the logged depth-independent
# prev ~12.93. The other reading is 8-x-attn.py.
# Shared weights, every layer's head on the targets, no early exit.
run_name = "8-ln-x-attn"
share_weights = True
block_type = "ln-x-attn"
ln_learnable = True             # logged: next ~0.833, not sqrt(768/767)
early_exit = False
exit_loss = "all-layers"
max_lr = 6e-4                   # assumed: GPT-2's, the journal's only logged lr (8-experiments)
size_interval = 50
# run settings (README: "Presets: the journal's values and our assumptions")
total_batch_size = 131072       # assumed: 2**17, logged (tok/sec x dt) in every 8-experiments train line
warmup_steps = 100              # assumed: with min_lr 0 and max_steps 305176 the cosine schedule prints the
                                #   journal's logged lr (5.9999e-04 at step 949, 5.9982e-04 at 3499);
                                #   build-nanogpt's 715 / 19073 steps would print 5.9978e-04 and 5.6993e-04
max_steps = 305176              # assumed: see warmup_steps (40B tokens at 2**17 per step)
min_lr = 0.0                    # assumed: see warmup_steps
