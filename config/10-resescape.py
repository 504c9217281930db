# 10-resescape: "I wonder if res + attn(ln(res)) is at heart performing a 'substitution' into
# res ... maybe it should be  y = res + attn(ln(res));  x = x + mlp(ln(y))  and we don't add y
# back in?" -- "Well, it turns out this sucks, similarly to x = x + attn(x)" (img/10-resescapei.png).
# Shared weights, every layer's head on the targets, no early exit, GPT-2's LR.
run_name = "10-resescape"
share_weights = True
block_type = "10-resescape"
early_exit = False
exit_loss = "all-layers"
max_lr = 6e-4
min_lr = 6e-5
size_interval = 50
