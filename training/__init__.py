"""DiT model, data loader over the training shards, trainer (issue 7: not built yet)."""
