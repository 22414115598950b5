"""The commands (`agent local start`, `agent worker`, `agent status`, `agent local install`)
and the wiring that builds each process from its configuration."""
