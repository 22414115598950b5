"""Every tunable default in one place, with the reason for its value."""

from __future__ import annotations

# Pool type this agent creates its work pool with: Prefect accepts any string, and a
# distinct type keeps Prefect's own workers from claiming runs meant for this agent.
POOL_TYPE = "local-agent"

# Prefect 1's default agent name.
AGENT_NAME = "agent"

# API client: every call has both timeouts; transient failures retry with capped
# exponential backoff and jitter until the deadline, then surface to the caller's loop.
API_CONNECT_TIMEOUT = 5.0
API_READ_TIMEOUT = 30.0
API_RETRY_DEADLINE = 20.0
API_RETRY_INITIAL_WAIT = 0.5
API_RETRY_MAX_WAIT = 8.0
API_RETRY_AFTER_CAP = 60.0  # a server's Retry-After is honoured up to this

# Poller: short interval while work flows, doubling to a cap while idle (Prefect 1
# backed off 0.25 s .. 10 s); runs due within PREFETCH are claimed early so that
# the engine (about 1.2 s to import prefect) starts them on time.
POLL_INTERVAL_MIN = 0.5
POLL_INTERVAL_MAX = 10.0
PREFETCH_SECONDS = 10.0
POLL_LIMIT = 200  # runs asked per poll; labels are filtered here, so leave headroom
HEARTBEAT_SECONDS = 30.0  # the server marks a worker offline after 3 missed beats
LOCAL_CHECK_SECONDS = 0.25  # how often a sleeping poller looks for freed workers

# Worker.
WORKER_IDLE_SLEEP = 0.5
FLOW_LOG_MAX_BYTES = 10 * 1024 * 1024  # per run; one rotated copy is kept
WORKER_GROUP = "agent-worker"  # supervisor program the poller starts with itself

# How often the backend config variable (--agent-config-id) is read again.
AGENT_CONFIG_REFRESH = 30.0
