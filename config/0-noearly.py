# 0-noearly: "the same as vanilla GPT (but reusing weights) without our early termination
# mechanism" -- one Block applied 12 times, ordinary final-layer loss, no early exit. The
# per-layer heads are on only so the log's allloss / per-layer val losses are comparable with
# the early-exit runs (they do not enter the loss).
# LR: the journal does not record it; "0-original ... needs a smaller learning rate" and
# 6-test-1 reruns "with GPT learning rate", so the shared-weight runs before 6-test used a larger
# LR than GPT-2's 6e-4. 3x (1.8e-3) is our assumption.
run_name = "0-noearly"
share_weights = True
layer_heads = True
early_exit = False
exit_loss = "final"
max_lr = 1.8e-3
min_lr = 1.8e-4
