"""The benchmark, ``python -m ops.benchmark`` (see ops/benchmark.md): ``main``
(arguments, the order of the parts, clean-up, exit status), ``contenders`` (the sides:
the floor, local-agent warm and cold under supervisord, Prefect's process worker),
``proxy`` (the counting TCP proxy in front of the server), ``measure`` (the REST calls
every part makes), ``phases`` (idle window, pickups, schedule, bursts), ``cancel``
(cancellation latency), ``sampling`` (processes by role from /proc: RSS), ``results``
(what one side measured), ``targets`` (the issue's limits and verdicts), ``report`` (the
tables), ``flows`` (the flow the cancellation part deploys) and ``console`` (progress
lines and SIGTERM, shared with ops.soak)."""
