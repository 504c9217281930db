# 8-experiments, "x = x + self.attn(x)  x = x + self.mlp(self.ln_2(x)) (all layer loss)
# (note, using x instead of res)", read with x = ln_1(res) (model.py "ln-x-attn"): the carried
# stream restarts from the normalised input each layer, matching the logged depth-independent
# prev ~12.93. The other reading is 8-x-attn.py.
# Shared weights, every layer's head on the targets, no early exit, learnable LN, GPT-2's LR.
run_name = "8-ln-x-attn"
share_weights = True
block_type = "ln-x-attn"
ln_learnable = True
early_exit = False
exit_loss = "all-layers"
max_lr = 6e-4
min_lr = 6e-5
size_interval = 50
