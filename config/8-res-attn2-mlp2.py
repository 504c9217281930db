# 8-experiments, double attention and double MLP "res*attn2(x) + attn(x), x * mlp2(LN(x)) +
# mlp(LN(x))" (all layer loss): "Same with" the double attention -- the residuals blow up.
# Shared weights, every layer's head on the targets, no early exit, learnable LN, GPT-2's LR.
run_name = "8-res-attn2-mlp2"
share_weights = True
block_type = "res-attn2-mlp2"
ln_learnable = True
early_exit = False
exit_loss = "all-layers"
max_lr = 6e-4
min_lr = 6e-5
size_interval = 50
