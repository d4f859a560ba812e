"""Gateway workers: GENGATE_GATEWAY_WORKERS processes serving one HTTP address, so the gateway's JSON work spreads
over cores (one asyncio process tops out near one core).

The process started as `python -m gateway` becomes a supervisor. It starts the workers (`python -m gateway.workers`,
the same settings from the same environment); each binds the address with SO_REUSEPORT, so the kernel spreads new
connections over them. The supervisor serves the metrics of all of them (prometheus_client's multiprocess mode:
each worker writes its counts to files in a directory of the supervisor's) and passes SIGTERM and SIGINT on: each
worker drains as a single gateway does, and the supervisor exits when all have (its status: 0, or the first
non-zero one). A worker that dies otherwise is started again, at most once a second; a supervisor that dies
(even by SIGKILL) takes its workers with it.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from common import logs
from common.settings import load
from gateway.settings import GatewaySettings

log = logging.getLogger("gateway")

RESTART_SECONDS = 1.0                # the least time between two starts of one worker
EARLY_SECONDS = 5.0                  # a worker that dies sooner than this after its start failed to start
EARLY_DEATHS = 5                     # failed starts in a row after which the supervisor gives up


def _start(env: dict[str, str]) -> subprocess.Popen:
    """A worker, with the supervisor's flags and environment (so its settings are the same)."""
    return subprocess.Popen([sys.executable, "-m", "gateway.workers", "--supervisor", str(os.getpid()),
                             *sys.argv[1:]], env=env)


def _status(code: int) -> int:
    """A worker's exit status as a shell reports it (killed by signal N: 128 + N)."""
    return 128 - code if code < 0 else code


def supervise(settings: GatewaySettings) -> int:
    """Runs settings.workers workers until SIGTERM or SIGINT; returns the exit status. A worker that cannot start
    (EARLY_DEATHS times in a row, each within EARLY_SECONDS) ends them all with status 1, as one gateway would."""
    metrics_dir = tempfile.mkdtemp(prefix="gengate-gateway-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    workers: list[subprocess.Popen] = []
    stopping = 0                          # the signal that asked the workers to stop (0: none yet)

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = signum
        for proc in workers:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    metrics = None
    try:
        metrics = _serve_metrics(settings, metrics_dir)
        for _ in range(settings.workers):
            if not stopping:
                workers.append(_start(env))
        started = [time.monotonic()] * len(workers)
        early = [0] * len(workers)
        log.info("gateway: %d workers on %s (SO_REUSEPORT)", settings.workers, settings.http_addr)
        status = 0
        while True:
            alive = False
            for i, proc in enumerate(workers):
                code = proc.poll()
                if code is None:
                    alive = True
                    continue
                if stopping:
                    status = status or _status(code)
                    continue
                early[i] = early[i] + 1 if time.monotonic() - started[i] < EARLY_SECONDS else 0
                if early[i] >= EARLY_DEATHS:
                    log.error("gateway worker exited with status %d, %d times in a row at start; stopping",
                              _status(code), early[i])
                    stop(signal.SIGTERM, None)
                    status = 1
                    continue
                log.error("gateway worker %d exited with status %d; starting another", proc.pid, _status(code))
                from prometheus_client import multiprocess
                multiprocess.mark_process_dead(proc.pid, metrics_dir)
                time.sleep(max(0.0, started[i] + RESTART_SECONDS - time.monotonic()))
                if stopping:                                  # asked to stop while waiting: start nothing
                    continue
                workers[i], started[i] = _start(env), time.monotonic()
                if stopping:                                  # the signal came while it started: pass it on
                    workers[i].send_signal(stopping)
                alive = True
            if stopping and not alive:
                return status
            time.sleep(0.05)
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if metrics is not None:
            metrics.shutdown()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve_metrics(settings: GatewaySettings, metrics_dir: str):
    """The workers' metrics together, on settings.metrics_addr (None when it is off)."""
    if not settings.metrics_addr:
        return None
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir          # read by prometheus_client at import
    import prometheus_client
    from prometheus_client import multiprocess

    registry = prometheus_client.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=metrics_dir)
    host, _, port = settings.metrics_addr.rpartition(":")
    server, _thread = prometheus_client.start_http_server(int(port), addr=host.strip("[]"), registry=registry)
    return server


_PR_SET_PDEATHSIG = 1


def _end_with_the_supervisor(supervisor: int) -> None:
    """A worker gets SIGTERM (and drains) when its supervisor ends, even by SIGKILL: no orphan keeps the port.
    (The supervisor may be PID 1, as in a container: its pid comes on the command line.)"""
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:                           # it ended before the signal was asked for
        sys.exit(1)


def worker_main() -> None:
    """One worker (`python -m gateway.workers --supervisor PID [gateway flags]`): a gateway on the shared address
    (SO_REUSEPORT), its metrics to the supervisor's directory."""
    if sys.argv[1:2] != ["--supervisor"] or len(sys.argv) < 3:
        raise SystemExit("gateway.workers is started by the gateway (GENGATE_GATEWAY_WORKERS), not by hand")
    supervisor = int(sys.argv[2])
    del sys.argv[1:3]
    _end_with_the_supervisor(supervisor)
    from gateway.server import serve

    settings = load(GatewaySettings)
    logs.configure(settings.log_level, settings.log_format)
    asyncio.run(serve(settings, worker=True))


if __name__ == "__main__":
    worker_main()
