# LN without learnable params: "Next, we see if layernorm learnable scale/shift parameters are
# actually necessary. Probably not! For res + attn(x), without learnable parameters, by step 499":
# prev grows linearly (1.36 -> 7.44 over 12 layers) and next = 1.00065 = sqrt(768/767), the
# unbiased std of a normalised vector.
# The journal's base wiring ("res", = pre-LN), shared weights, every layer's head on the targets,
# no early exit, GPT-2's LR.
run_name = "ln-noparams-res-attn"
share_weights = True
block_type = "res"
ln_learnable = False
early_exit = False
exit_loss = "all-layers"
max_lr = 6e-4
min_lr = 6e-5
size_interval = 50
