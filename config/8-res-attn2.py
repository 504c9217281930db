# 8-experiments, double attention "res*attn2(x) + attn(x), x + mlp(LN(x))" (all layer loss):
# "the residuals are blowing up the more we train it" -- SIZE COMPARISON prev grows layer over
# layer (2.5 -> 216047 over 12 layers; 1.07 -> 138020 at step 949) while next stays ~1.1.
# Shared weights, every layer's head on the targets, no early exit (the logged earlystop is 0),
# learnable LN (logged next ~1.10, not 1.00065), GPT-2's LR (logged lr:5.9999e-04 at step 949).
run_name = "8-res-attn2"
share_weights = True
block_type = "res-attn2"
ln_learnable = True
early_exit = False
exit_loss = "all-layers"
max_lr = 6e-4
min_lr = 6e-5
size_interval = 50
