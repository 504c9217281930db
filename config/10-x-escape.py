# 10-x-escape: "What about  y = res + attn(ln(res));  x = res + mlp(ln(y))" -- "performance seems
# truly worse ... so it is really quite important that the logits directly get the output of the
# attention layer" (img/10-x-escapei.png).
# Shared weights, every layer's head on the targets, no early exit, GPT-2's LR.
run_name = "10-x-escape"
share_weights = True
block_type = "10-x-escape"
early_exit = False
exit_loss = "all-layers"
max_lr = 6e-4
min_lr = 6e-5
size_interval = 50
