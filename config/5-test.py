# 5-test: "Definitely punish confidently wrong answers ... Ask the next layer if wrong or not
# wrong": xe_factor_prev = ((_xe_prev - 1) * _just_triggered_prev + 1);
# loss_ = (xe_factor_prev * _confidence * _mask_BT_prev).mean() -- the previous layer's xe /
# just_triggered / mask with the current layer's confidence (journal plot img/5-test.png: "Strangely
# linear, but also outputs 'the' a hundred times").
# Shared weights; exit with probability = confidence (as 3-test); exit loss "5-test".
# LR: assumed 3x GPT-2's (see 0-noearly.py).
run_name = "5-test"
share_weights = True
early_exit = True
exit_mode = "sample"
confidence = "max-prob"
exit_loss = "5-test"
max_lr = 1.8e-3
min_lr = 1.8e-4
