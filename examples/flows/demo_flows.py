"""A small example flow for the demo deployment."""

from __future__ import annotations

import os
import platform

from prefect import flow, task


@task
def greet(name: str) -> str:
    return f"Hello, {name}, from {platform.node()} (pid {os.getpid()})!"


@flow(log_prints=True)
def hello(name: str = "local-agent") -> str:
    message = greet(name)
    print(message)
    return message
