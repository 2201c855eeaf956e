"""Running the application under uvicorn (the one module that imports it)."""

from __future__ import annotations

import socket

import uvicorn

from engine.clock import Clock
from engine.project import Project
from engine.serve.app import HEADER_LIMIT, create_app


def make_server(
    project: Project, clock: Clock, *, host: str, port: int, log: bool = True
) -> uvicorn.Server:
    """A uvicorn server for the project; ``X-Forwarded-*`` honoured only from ``[serve] trusted_proxies``."""
    settings = project.settings
    app = create_app(project.database(), settings, clock)
    trusted = list(settings.serve.trusted_proxies)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or [],
        server_header=False,
        access_log=log,
        log_level="info" if log else "warning",
        lifespan="off",
        h11_max_incomplete_event_size=HEADER_LIMIT,  # the request line and headers, in pieces
        timeout_keep_alive=5,
    )
    return uvicorn.Server(config)


def serve(project: Project, clock: Clock, *, host: str, port: int, log: bool = True) -> None:
    """Answer requests until stopped (Ctrl-C or SIGTERM)."""
    make_server(project, clock, host=host, port=port, log=log).run()


def bound_socket(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port), for servers started by tests and benchmarks."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock
