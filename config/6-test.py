# 6-test (6-test-1): "Rerun the 'confidence of target' experiment with GPT learning rate." --
# the 4-test form with the target token's probability as the confidence (confidence
# "target-prob" for the exit masks too), at GPT-2's 6e-4.
# Shared weights; exit with probability = confidence (as 3-test); exit loss "6-test".
run_name = "6-test"
share_weights = True
early_exit = True
exit_mode = "sample"
confidence = "target-prob"
exit_loss = "6-test"
max_lr = 6e-4
min_lr = 6e-5
