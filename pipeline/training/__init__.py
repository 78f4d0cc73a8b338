"""The training loop (Trainer, fit, evaluate_model), the tasks it trains for (Classification, LandmarkRegression)
and the landmark metrics (NME, CED AUC, failure rate)."""
