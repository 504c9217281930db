# LN without learnable params, the same journal remark as ln-noparams-res-mul.py ("If we use
# res*attn(x), weirdly (and as previously seen), the residuals blow up ... by step 3800": prev
# 0.95 -> 1.2e8 over 12 layers, next 1.00065) read literally: a bare x = res * attn(ln_1(res)),
# no additive residual around attention (model.py "res-mul-attn"), then x = x + mlp(ln_2(x)).
run_name = "ln-noparams-res-mul-bare"
share_weights = True
block_type = "res-mul-attn"     # assumed: the literal reading (ln-noparams-res-mul.py: the other)
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
