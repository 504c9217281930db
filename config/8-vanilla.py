# 8-experiments, "For vanilla GPT (as usual shared weights), all layer loss": prev grows
# linearly with depth (0.88 -> 5.93 by step 1100, 1.59 -> 11.72 by step 4250), "Most of the
# contribution seems to come from the attention step" (mid tracks prev).
# Pre-LN GPT-2 block shared over 12 layers, every layer's head on the targets, no early exit,
# learnable LN, GPT-2's LR.
run_name = "8-vanilla"
share_weights = True
block_type = "pre-ln"
ln_learnable = True
early_exit = False
exit_loss = "all-layers"
max_lr = 6e-4
min_lr = 6e-5
size_interval = 50
