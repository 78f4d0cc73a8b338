"""One thin script per DVC stage; each reads its params section and calls `pipeline`."""
