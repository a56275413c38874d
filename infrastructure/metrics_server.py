"""Our Prometheus endpoint (``METRICS_PORT``): the per-turn histograms of every session this worker runs.

LiveKit runs each session in a job process of its own, and its ``prometheus_port`` serves only the worker's
gauges. So the worker's main process serves ``/metrics`` here, from one of two sources:

- ``multiprocess_dir``: LiveKit job processes, started with ``PROMETHEUS_MULTIPROC_DIR`` pointing at it, write
  their histograms there (prometheus-client's multiprocess mode); the server sums them per request.
- no directory: the sessions run in this process (the console), so the process's own registry is served.

The server runs on prometheus-client's own thread; :meth:`MetricsServer.close` stops it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector


class MetricsServer:
    def __init__(self, *, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @classmethod
    def start(cls, *, port: int, host: str = "0.0.0.0", multiprocess_dir: Path | None = None) -> MetricsServer:
        """Serve ``http://host:port/metrics``; ``port=0`` takes a free one (see :attr:`port`)."""
        registry = REGISTRY
        if multiprocess_dir is not None:
            multiprocess_dir.mkdir(parents=True, exist_ok=True)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(multiprocess_dir))
        server, thread = start_http_server(port, addr=host, registry=registry)
        return cls(server=server, thread=thread)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
