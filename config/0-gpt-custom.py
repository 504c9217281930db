# 0-gpt-custom: '"0-gpt-custom" is the same as GPT but with our own code' -- exactly GPT-2 124M
# (separate blocks, pre-LN, learned positions, final-layer loss, no per-layer heads) trained by
# this trainer: the baseline every other run is compared with (build-nanogpt's reference run).
run_name = "0-gpt-custom"
share_weights = False
block_type = "pre-ln"
layer_heads = False
early_exit = False
exit_loss = "final"
max_lr = 6e-4
min_lr = 6e-5
