# 2-test: "losses += _block_loss / self.config.n_layer" with
# "_block_loss = torch.log(1 - torch.exp(-1*_block_loss))", "namely it is positive feedback only.
# As we can see, it doesn't ever get to good training error, but better than noise."
# Shared weights, early termination on (max-prob >= 0.9), exit loss "2-test".
# LR: assumed 3x GPT-2's (see 0-noearly.py).
run_name = "2-test"
share_weights = True
early_exit = True
exit_mode = "threshold"
exit_threshold = 0.9
confidence = "max-prob"
exit_loss = "2-test"
max_lr = 1.8e-3
min_lr = 1.8e-4
