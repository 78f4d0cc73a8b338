"""The training loop (Trainer, fit, evaluate_model) and the task metrics it reports (accuracy, NME, CED AUC)."""
