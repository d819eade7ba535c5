"""fedllm_client."""
