"""The benchmark, ``python -m ops.benchmark`` (see ops/benchmark.md): ``main``
(arguments, the Prefect server, clean-up, exit status), ``contenders`` (starting
Prefect's process worker and local-agent), ``measure`` (what both share, one burst,
/api/health timing), ``sampling`` (processes from /proc: RSS, PSS, CPU), ``results``
(what one side measured), ``report`` (the table) and ``console`` (progress lines and
SIGTERM, shared with ops.soak)."""
