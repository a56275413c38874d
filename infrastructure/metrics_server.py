"""Our Prometheus endpoint (``METRICS_PORT``): the instruments of every session this worker runs (turns, retrieval,
the batcher, the cache, storage errors, client health: ``infrastructure/metrics.py``).

LiveKit runs each session in a job process of its own, and its ``prometheus_port`` serves only the worker's
gauges. So the worker's main process serves ``/metrics`` here, from one of two sources:

- ``multiprocess_dir``: LiveKit job processes, started with ``PROMETHEUS_MULTIPROC_DIR`` pointing at it, write
  their histograms there (prometheus-client's multiprocess mode); the server sums them per request.
- no directory: the sessions run in this process (the console), so the process's own registry is served.

LiveKit starts a job process per session, and prometheus-client leaves each one's files behind, so a long-running
worker would read thousands of files per scrape. Before each scrape, the files of processes that have exited are
summed into one archive file per metric type (``counter_archive.db``, ``histogram_archive.db``: raw per-key values
add up, which is how prometheus-client itself merges them) and removed; "live" gauges of exited processes are
dropped, as ``mark_process_dead`` does.

The server runs on prometheus-client's own thread; :meth:`MetricsServer.close` stops it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

logger = logging.getLogger("companion.metrics")

ARCHIVE = "archive"


class MetricsServer:
    def __init__(self, *, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @classmethod
    def start(
        cls,
        *,
        port: int,
        host: str = "0.0.0.0",
        multiprocess_dir: Path | None = None,
        registry: CollectorRegistry | None = None,
    ) -> MetricsServer:
        """Serve ``http://host:port/metrics``; ``port=0`` takes a free one (see :attr:`port`). ``registry``: this
        process's own instruments by default (a test passes the one its process records into)."""
        registry = registry or REGISTRY
        if multiprocess_dir is not None:
            multiprocess_dir.mkdir(parents=True, exist_ok=True)
            registry = CollectorRegistry()
            registry.register(ArchivingCollector(multiprocess_dir))
        server, thread = start_http_server(port, addr=host, registry=registry)
        return cls(server=server, thread=thread)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class ArchivingCollector:
    """prometheus-client's multiprocess collector over ``folder``, archiving exited processes' files first."""

    def __init__(self, folder: Path, *, is_alive: Callable[[int], bool] | None = None) -> None:
        self._folder = folder
        self._is_alive = is_alive or _pid_alive
        self._inner = MultiProcessCollector(None, path=str(folder))
        self._lock = threading.Lock()  # scrapes may overlap; the archive must be written by one at a time

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            try:
                archive_exited_processes(self._folder, is_alive=self._is_alive)
            except OSError:  # the scrape still answers, from the files as they are
                logger.exception("archiving the metrics of exited job processes failed")
            return list(self._inner.collect())


def archive_exited_processes(folder: Path, *, is_alive: Callable[[int], bool]) -> int:
    """Fold each exited process's counter, histogram and summary files into the type's archive file; drop its
    live gauges. Returns how many files were folded."""
    folded = 0
    for path in sorted(folder.glob("*.db")):
        kind, _, rest = path.stem.partition("_")
        if kind == "gauge":
            mode, _, pid = rest.partition("_")
            if mode.startswith("live") and pid.isdigit() and not is_alive(int(pid)):
                mark_process_dead(int(pid), str(folder))
            continue
        if rest == ARCHIVE or not rest.isdigit() or is_alive(int(rest)):
            continue
        archive = MmapedDict(str(folder / f"{kind}_{ARCHIVE}.db"))
        try:
            for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(str(path)):
                total, latest = archive.read_value(key)
                archive.write_value(key, total + value, max(latest, timestamp))
        finally:
            archive.close()
        path.unlink()
        folded += 1
    return folded


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
