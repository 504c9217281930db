# 0-original: '"0-original" does not re-use any weights, and needs a smaller learning rate to
# converge properly' -- 12 separate blocks, GPT-2's own LR (6e-4, smaller than the shared-weight
# runs' assumed 1.8e-3), ordinary final-layer loss; per-layer heads on for logging only.
run_name = "0-original"
share_weights = False
layer_heads = True
early_exit = False
exit_loss = "final"
max_lr = 6e-4
min_lr = 6e-5
