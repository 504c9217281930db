# 8-experiments, "res + attn(x), x * mlp(LN(x))": "it still blows up, but a little slower"
# (prev 0.70 -> 313.9 over 12 layers at step 949, -> 5.2e8 at step 3499).
# The logged next is 1.0006 = sqrt(768/767), so this run had LayerNorm without learnable params.
# Shared weights, every layer's head on the targets, no early exit, GPT-2's LR.
run_name = "8-res-mul-mlp"
share_weights = True
block_type = "res-mul-mlp"
ln_learnable = False
early_exit = False
exit_loss = "all-layers"
max_lr = 6e-4
min_lr = 6e-5
size_interval = 50
