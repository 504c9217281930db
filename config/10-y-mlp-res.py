# The journal's last variant: "y = res + attn(ln(res));  x = y + mlp(ln(res))  i.e. how important
# is it that the output of attention gets fed into the MLP?" (no result recorded yet).
# Attention and MLP both read the block input (a parallel block). Shared weights, every layer's
# head on the targets, no early exit, GPT-2's LR.
run_name = "10-y-mlp-res"
share_weights = True
block_type = "10-y-mlp-res"
early_exit = False
exit_loss = "all-layers"
max_lr = 6e-4
min_lr = 6e-5
size_interval = 50
