"""fedllm_core."""
