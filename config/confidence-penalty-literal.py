# confidence-penalty-literal: the journal's formula read as written, block_loss = -log(1 - pr[max])
# added to the loss, so confident layers are penalised (config/confidence-penalty.py follows the
# journal's description of the effect instead: confident layers rewarded). Same run otherwise.
run_name = "confidence-penalty-literal"
share_weights = True
early_exit = True
exit_mode = "threshold"
exit_threshold = 0.9
confidence = "max-prob"
exit_loss = "confidence-penalty-literal"
max_lr = 6e-4
min_lr = 6e-5
