"""What operators see: Prometheus metrics, the HTTP endpoint and the agent's own logs."""
