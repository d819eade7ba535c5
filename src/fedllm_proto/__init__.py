"""fedllm_proto."""
