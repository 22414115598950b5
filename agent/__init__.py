"""local-agent: runs Prefect 3 flow runs as local subprocesses under supervisor.

Kept import-free on purpose: the per-run shim (``python -I -m agent.worker.shim``) imports
this package, and it must start fast.
"""

__version__ = "0.1.0"
