"""Model loading, packed-attention wiring and the loss-in-forward wrapper."""
