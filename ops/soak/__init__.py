"""The soak test, ``python -m ops.soak`` (see ops/soak.md): ``main`` (arguments, the
Prefect server, clean-up, exit status), ``orchestration`` (one soak from start to
report), ``chaos`` (the killer) and ``accounting`` (what became of each run)."""
