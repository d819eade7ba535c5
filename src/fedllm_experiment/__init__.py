"""fedllm_experiment."""
