"""Plumbing every stage shares: params schema, atomic writes, MLflow tracking, Ray storage and cluster, checkpoints."""
