# LN without learnable params: "If we use res*attn(x), weirdly (and as previously seen), the
# residuals blow up. For LN without learnable parameters (everylayer loss, shared weights), by
# step 3800": prev 0.95 -> 1.2e8 over 12 layers, next 1.00065.
# "res*attn(x)" ("as previously seen") is read as the double-attention wiring
# res*attn2(x) + attn(x) (model.py "res-attn2"; model.py has no block with a bare res*attn(x)).
# Shared weights, every layer's head on the targets, no early exit, GPT-2's LR.
run_name = "ln-noparams-res-mul"
share_weights = True
block_type = "res-attn2"
ln_learnable = False
early_exit = False
exit_loss = "all-layers"
max_lr = 6e-4
min_lr = 6e-5
size_interval = 50
