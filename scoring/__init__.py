"""Per-response log-probabilities of human answers from causal language models."""
