"""Operations tools: ``python -m ops.soak`` and ``python -m ops.benchmark``, run from the
repository's root (they share ``tests/integration/harness.py`` and ``examples/demo.py``
with the tests through normal imports)."""
