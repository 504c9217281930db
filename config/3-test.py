# 3-test: "incentivize high confidence ... whilst penalizing wrong answers ... Whenever confidence
# is high, there is some probability of terminating the line of thought":
# loss_ = (xe * _confidence * _mask_BT).mean().
# Shared weights; tokens exit with probability = confidence (exit_mode "sample"); exit loss "3-test".
# LR: assumed 3x GPT-2's (see 0-noearly.py).
run_name = "3-test"
share_weights = True
early_exit = True
exit_mode = "sample"
confidence = "max-prob"
exit_loss = "3-test"
max_lr = 1.8e-3
min_lr = 1.8e-4
