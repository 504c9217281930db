# 4-test: "we don't use the true loss against the true target until the network is actually
# ready to output the target": xe_factor = ((xe - 1) * _just_triggered + 1);
# loss_ = (xe_factor * _confidence * _mask_BT).mean(). "This certainly punishes confidence early on."
# Shared weights; exit with probability = confidence (as 3-test); exit loss "4-test".
# LR: assumed 3x GPT-2's (see 0-noearly.py).
run_name = "4-test"
share_weights = True
early_exit = True
exit_mode = "sample"
confidence = "max-prob"
exit_loss = "4-test"
max_lr = 1.8e-3
min_lr = 1.8e-4
