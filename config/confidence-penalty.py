# confidence-penalty: the journal's first idea, "block_loss = -log(1 - pr[max]) (the lower the
# confidence, the closer the block_loss is to 0; the higher the confidence, the more negative the
# block_loss)" -- "it still doesn't work very well ... the confidence is being pushed very high on
# early layers, with no bearing on the final layer". Not a named run in the journal.
# Shared weights, early termination on (max-prob >= 0.9), exit loss "confidence-penalty".
run_name = "confidence-penalty"
share_weights = True
early_exit = True
exit_mode = "threshold"
exit_threshold = 0.9
confidence = "max-prob"
exit_loss = "confidence-penalty"
max_lr = 6e-4
min_lr = 6e-5
