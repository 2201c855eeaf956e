"""Running the application under uvicorn (the one module that imports it)."""

from __future__ import annotations

import os
import socket
from typing import Any

import uvicorn

from engine.clock import Clock, SystemClock
from engine.project import Project, open_project
from engine.serve.app import HEADER_LIMIT, create_app

PROJECT_VARIABLE = "CAMPAIGN_PROJECT"  # how worker processes find the project (as --project)


def _options(project: Project, *, host: str, port: int, log: bool) -> dict[str, Any]:
    trusted = list(project.settings.serve.trusted_proxies)
    return {
        "host": host,
        "port": port,
        # X-Forwarded-* only from [serve] trusted_proxies; none given: never.
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted or [],
        "server_header": False,
        "access_log": log,
        "log_level": "info" if log else "warning",
        "lifespan": "off",
        "h11_max_incomplete_event_size": HEADER_LIMIT,  # the request line and headers, in pieces
        "timeout_keep_alive": 5,
    }


def make_server(
    project: Project, clock: Clock, *, host: str, port: int, log: bool = True
) -> uvicorn.Server:
    """A uvicorn server (one process) for the project."""
    app = create_app(project.database(), project.settings, clock)
    return uvicorn.Server(uvicorn.Config(app, **_options(project, host=host, port=port, log=log)))


def environment_app():
    """The application of a worker process: the project named by ``CAMPAIGN_PROJECT``."""
    project = open_project(os.environ[PROJECT_VARIABLE])
    return create_app(project.database(), project.settings, SystemClock())


def serve(
    project: Project, clock: Clock, *, host: str, port: int, log: bool = True, workers: int = 1
) -> None:
    """Answer requests until stopped (Ctrl-C or SIGTERM), in ``workers`` processes."""
    if workers == 1:
        make_server(project, clock, host=host, port=port, log=log).run()
        return
    create_app(project.database(), project.settings, clock)  # fail here, once, on a bad set-up
    os.environ[PROJECT_VARIABLE] = str(project.root)
    uvicorn.run(
        "engine.serve.server:environment_app",
        factory=True,
        workers=workers,
        **_options(project, host=host, port=port, log=log),
    )


def bound_socket(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port), for servers started by tests and benchmarks."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock
