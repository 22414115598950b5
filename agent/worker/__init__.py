"""A worker: takes specs from the spool, launches and watches each run, settles it.

Kept import-free: the per-run shim (``python -I -m agent.worker.shim``) imports this
package, and must start fast with the standard library only."""
