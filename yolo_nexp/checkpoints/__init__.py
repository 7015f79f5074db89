"""Opening checkpoints safely: a static scan of the pickle, the one allowlist, and the one loader."""
