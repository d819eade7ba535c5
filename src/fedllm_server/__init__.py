"""fedllm_server."""
