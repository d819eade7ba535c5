"""Hybrid edge-cloud distillation (docs/distill.md): a cloud teacher, KD into θ^v."""
