# reward-prev-token: "Alternatively, we can reward tokens that are equal to the next token in the
# previous layer." (after "the third layer is guessing not the third layer, but continuing to
# guess the second layer"). Not a named run in the journal.
# Shared weights, early termination on (max-prob >= 0.9), exit loss "reward-prev-token".
run_name = "reward-prev-token"
share_weights = True
early_exit = True
exit_mode = "threshold"
exit_threshold = 0.9
confidence = "max-prob"
exit_loss = "reward-prev-token"
max_lr = 6e-4
min_lr = 6e-5
