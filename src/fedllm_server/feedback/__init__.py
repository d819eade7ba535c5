"""The adaptive feedback loop: a bandit over the GSFS trigger thresholds (docs/feedback.md)."""
