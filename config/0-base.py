# 0-base: the journal asks 'is it equal to "0-base"? Or does "0-base" have early termination?'.
# Our reading: the base of the early-exit experiments -- shared weights, every layer's head
# trained on the targets ("all layer loss"), and early termination on (a token exits at the
# first layer whose max-prob confidence reaches 0.9). 0-noearly is the same without it.
# LR: assumed 3x GPT-2's (see 0-noearly.py).
run_name = "0-base"
share_weights = True
layer_heads = True
early_exit = True
exit_mode = "threshold"
exit_threshold = 0.9
confidence = "max-prob"
exit_loss = "all-layers"
max_lr = 1.8e-3
min_lr = 1.8e-4
