"""The fleet test, ``python -m ops.fleet`` (see ops/fleet.md): ``main`` (arguments,
PostgreSQL, the Prefect server, clean-up, exit status), ``orchestration`` (one fleet run
from start to report), ``hosts`` (one host: supervisord in its own UTS namespace),
``chaos`` (the host killer), ``sampler`` (metrics, server CPU, connections) and
``report`` (accounting and figures)."""
