"""The poller: a short loop over named duties (claim, settle, stranded runs, cancellations,
backend config, heartbeat, outbox), and the health it reports."""
