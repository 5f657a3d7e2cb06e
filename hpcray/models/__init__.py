"""Local model checkpoints: tiny real-architecture models for tests and demos (no downloads)."""
