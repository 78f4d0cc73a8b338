"""The Ray Tune search: the configuration space, the trunk cache, the per-trial trainable, the tuner and trial checkpoints."""
