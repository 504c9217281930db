# 8-experiments, "x = x + self.attn(x)  x = x + self.mlp(self.ln_2(x)) (all layer loss)
# (note, using x instead of res)", read as no LayerNorm before attention (model.py "no-ln-attn"):
# prev settles at ~12.93 at every depth, next ~0.833. 10-resescape later "sucks, similarly to
# x = x + attn(x)". The other reading is 8-ln-x-attn.py.
# Shared weights, every layer's head on the targets, no early exit, learnable LN, GPT-2's LR.
run_name = "8-x-attn"
share_weights = True
block_type = "no-ln-attn"
ln_learnable = True
early_exit = False
exit_loss = "all-layers"
max_lr = 6e-4
min_lr = 6e-5
size_interval = 50
