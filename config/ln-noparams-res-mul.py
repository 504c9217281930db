# LN without learnable params: "If we use res*attn(x), weirdly (and as previously seen), the
# residuals blow up. For LN without learnable parameters (everylayer loss, shared weights), by
# step 3800": prev 0.95 -> 1.2e8 over 12 layers, next 1.00065.
# This preset reads "res*attn(x) ... as previously seen" as the double-attention wiring
# res*attn2(x) + attn(x) seen before (model.py "res-attn2"); ln-noparams-res-mul-bare.py is the
# bare res*attn(x).
run_name = "ln-noparams-res-mul"
share_weights = True
block_type = "res-attn2"        # assumed: "as previously seen" = the double attention
ln_learnable = False            # logged: next = 1.00065 = sqrt(768/767)
early_exit = False
exit_loss = "all-layers"        # from the journal: "everylayer loss, shared weights"
max_lr = 6e-4                   # assumed: GPT-2's, the journal's only logged lr (8-experiments)
size_interval = 50
# run settings (README: "Presets: the journal's values and our assumptions")
total_batch_size = 131072       # assumed: 2**17, logged (tok/sec x dt) in every 8-experiments train line
warmup_steps = 100              # assumed: with min_lr 0 and max_steps 305176 the cosine schedule prints the
                                #   journal's logged lr (5.9999e-04 at step 949, 5.9982e-04 at 3499);
                                #   build-nanogpt's 715 / 19073 steps would print 5.9978e-04 and 5.6993e-04
max_steps = 305176              # assumed: see warmup_steps (40B tokens at 2**17 per step)
min_lr = 0.0                    # assumed: see warmup_steps
