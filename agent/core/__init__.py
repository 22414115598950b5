"""Pure rules every room uses: states and the run lifecycle, job variables, the spec, the
flow's environment, the claim decision, backoff and the crash-loop policy. No I/O."""
