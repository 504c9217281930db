# 1-noise: "the block_loss was only slightly normalized (i.e. for each layer,
# -1 * crossentropy / n_layers), but this is still very noisy, so learning is not very good."
# Shared weights, early termination on (max-prob >= 0.9), exit loss "1-noise".
# LR: assumed 3x GPT-2's (see 0-noearly.py).
run_name = "1-noise"
share_weights = True
early_exit = True
exit_mode = "threshold"
exit_threshold = 0.9
confidence = "max-prob"
exit_loss = "1-noise"
max_lr = 1.8e-3
min_lr = 1.8e-4
