"""One worker with its HTTP API, metrics, webhooks and flagd file, composed and run.

:func:`serve_worker` is what ``driftswitch run`` (:mod:`driftswitch.streams.tools.run`) and the
demo start once they have a broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from driftswitch.streams.contract.errors import DriftswitchError

if TYPE_CHECKING:  # imported where used: `driftswitch --help` stays fast
    from driftswitch.streams.config.model import Config
    from driftswitch.streams.contract.topics import Topics
    from driftswitch.streams.kafka.groups import StageMember
    from driftswitch.streams.kafka.settings import KafkaSecurity, KafkaSettings
    from driftswitch.streams.service.joinstage import JoinStage
    from driftswitch.streams.service.metrics import Metrics
    from driftswitch.streams.service.worker import WorkerSettings

__all__ = [
    "DEFAULT_STAGE",
    "DEFAULT_WEB_PORT",
    "STAGES",
    "StartupError",
    "check_port",
    "serve_worker",
    "tune_gc",
    "tune_malloc",
]

log = logging.getLogger(__name__)

DEFAULT_WEB_PORT = 6066
#: What a process can run (``driftswitch run --stage``), and what it runs by default: both
#: stages, connected through the observations topic.
STAGES = ("all", "join", "decide", "single")
DEFAULT_STAGE = "all"


#: ``gc.set_threshold`` of a worker process (Python's default: 700, 10, 10).
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Set up the cyclic garbage collector for a long-running worker process.

    The hot path allocates a few short-lived tuples per event, which reference counting frees;
    with Python's default thresholds the collector still runs a young-generation pass every 700
    allocations, and its older passes walk every object that survived: the pending join entries,
    the merge's buffer, the detectors. With them, ``driftswitch run`` took 15-55 % longer over
    the same backlog (measured on a busy machine, in pairs, several times). So the objects of
    start-up (modules, config) are frozen out of the collector's sight, and passes come every
    50,000 allocations instead (older generations proportionally rarer). Cyclic garbage, which
    the service rarely makes, waits a little longer to be freed.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


#: glibc's ``mallopt`` parameters (``malloc.h``).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Allocations of this many bytes or more get memory of their own from the system (a mapping),
#: given back when freed; what :func:`tune_malloc` sets as both thresholds (glibc's initial value).
MMAP_THRESHOLD = 128 * 1024
#: The environment variables that set the same (glibc reads them at start): an operator's
#: setting wins over :func:`tune_malloc`'s.
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune_malloc() -> bool:
    """Keep glibc's malloc from holding on to memory after transient peaks; True if it did.

    glibc serves a large allocation from its own mapping, but the first time such a block is
    freed it raises that threshold to the block's size (up to 32 MiB), and from then on blocks
    up to that size come from the heap, which gives memory back only from its top. A worker
    makes such blocks all the time and frees them soon: the join checkpoints' serialised bytes,
    the tables of large dicts as they grow, fetched batches. On the heap, each peak of them
    left its high-water mark in the RSS: over a 4M-event soak at a steady 200,000 pending the
    RSS rose from 380 to 423 MB (+12.9 MB per million events), and with the thresholds fixed
    it stayed at 330-366 MB, ending where it began (docs/performance.md, "Memory over a long run").

    Setting both thresholds fixes them at :data:`MMAP_THRESHOLD` (which also turns off glibc's
    adjusting). Nothing happens where the C library is not glibc (its allocator keeps its own
    rules) or where the operator set :data:`MALLOC_ENV` (their values stand).
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc" or any(os.environ.get(v) for v in MALLOC_ENV):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, MMAP_THRESHOLD)
    )


class StartupError(DriftswitchError):
    """The worker cannot start: its HTTP port is taken, or the broker address is not Kafka."""


def check_port(host: str, port: int) -> None:
    """Raise :class:`StartupError` if ``host:port`` cannot be listened on (e.g. it is taken).

    Checked before anything else starts, so a busy port is one line, not a traceback after the
    broker and the worker came up.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP server does
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"cannot listen on http://{host}:{port}: the port is in use (another "
                    "driftswitch run or demo?); choose another with --web-port"
                ) from None
            raise StartupError(
                f"cannot listen on http://{host}:{port}: {exc.strerror or exc}"
            ) from None


async def serve_worker(
    config: Config,
    bootstrap: str,
    topics: Topics,
    *,
    web_host: str = "127.0.0.1",
    web_port: int = DEFAULT_WEB_PORT,
    group: str = "driftswitch",
    snapshot_interval: float = 1.0,
    state_dir: str | None = None,
    stop: asyncio.Event | None = None,
    environ: Mapping[str, str] | None = None,
    config_path: str | None = None,
    flagd_file: str | None = None,
    security: KafkaSecurity | None = None,
    stage: str = DEFAULT_STAGE,
    handle_signals: bool = True,
) -> None:
    """Create the topics, then run one worker and its HTTP API until ``stop`` (or a signal).

    With ``handle_signals`` (the default), SIGINT and SIGTERM stop the worker gracefully; a caller
    that handles them itself (``driftswitch demo``) passes ``False`` and sets ``stop``.

    ``security`` (TLS, SASL) applies to every Kafka connection of the worker; default PLAINTEXT.

    The worker exports Prometheus metrics on ``/metrics`` and calls the config's webhooks, whose
    secrets are read from ``environ`` (default: the process environment), as is the admin API's
    token (``DRIFTSWITCH_ADMIN_TOKEN``). With ``config_path``, SIGHUP and ``POST
    /api/v1/config/reload`` re-read that file. With ``flagd_file``, a flagd flag-definition
    document is kept current there (atomically replaced on every published change). With
    ``state_dir``, the join's pending entries live in RocksDB there (see the worker module).
    ``stage`` says what this process runs: ``all`` (the default: both stages in this process,
    talking through the observations topic as separate processes would), ``join`` (the join
    stage, :mod:`~driftswitch.streams.service.joinstage`, with ``/healthz`` and ``/metrics``
    only), ``decide`` (the decide stage: the worker module's "Stages") or ``single`` (one
    worker joins and decides in one step, without the observations topic).
    """
    from driftswitch.streams.kafka.settings import KafkaSecurity, KafkaSettings

    check_port(web_host, web_port)
    security = security if security is not None else KafkaSecurity()
    # A join-stage process joins its group first, while the rest of it starts (the group's
    # rebalance takes a few seconds): the member waits, unbound, for the stage to take it over.
    early = None
    if stage == "join":
        early = await _join_early(
            KafkaSettings(bootstrap=bootstrap, security=security), group, topics, state_dir
        )
    try:
        await _serve(
            config,
            bootstrap,
            topics,
            web_host=web_host,
            web_port=web_port,
            group=group,
            snapshot_interval=snapshot_interval,
            state_dir=state_dir,
            stop=stop,
            environ=environ,
            config_path=config_path,
            flagd_file=flagd_file,
            security=security,
            stage=stage,
            member=early,
            handle_signals=handle_signals,
        )
    finally:
        if early is not None:
            await early.stop()  # a no-op once the join stage has stopped it


async def _join_early(
    kafka: KafkaSettings, group: str, topics: Topics, state_dir: str | None
) -> StageMember | None:
    """The join stage's member, started before the rest of the process
    (:func:`~driftswitch.streams.service.startup.join_member`), or ``None`` when it cannot start
    yet (e.g. the topics do not exist before the first start): the stage joins later then."""
    from driftswitch.streams.service.startup import join_member

    members_dir = Path(state_dir) / f"{group}.join" if state_dir is not None else None
    try:
        return await join_member(kafka, f"{group}.join", topics, members_dir)
    except Exception as err:  # the stage's own start reports what is wrong
        log.info("join stage: not joining the group before the start is done: %r", err)
        return None


async def _serve(
    config: Config,
    bootstrap: str,
    topics: Topics,
    *,
    web_host: str,
    web_port: int,
    group: str,
    snapshot_interval: float,
    state_dir: str | None,
    stop: asyncio.Event | None,
    environ: Mapping[str, str] | None,
    config_path: str | None,
    flagd_file: str | None,
    security: KafkaSecurity,
    stage: str,
    member: StageMember | None,
    handle_signals: bool,
) -> None:
    """:func:`serve_worker`, once a join-stage process's ``member`` is started (or ``None``)."""
    from prometheus_client import CollectorRegistry

    from driftswitch.streams.contract.errors import ConfigError
    from driftswitch.streams.contract.flagd import FlagdFile
    from driftswitch.streams.kafka import KafkaSettings, ensure_topics
    from driftswitch.streams.service.auth import AdminAuth
    from driftswitch.streams.service.hooks import resolve_hooks
    from driftswitch.streams.service.http import serve
    from driftswitch.streams.service.joinstage import JoinStage, LocalBatches
    from driftswitch.streams.service.metrics import Metrics
    from driftswitch.streams.service.startup import STARTUP
    from driftswitch.streams.service.worker import Worker, WorkerSettings, state_topic

    STARTUP.mark("imports")
    env = os.environ if environ is None else environ
    hooks = resolve_hooks(config, env)
    kafka = KafkaSettings(bootstrap=bootstrap, security=security)
    await ensure_topics(kafka, [*topics.specs(), state_topic(topics)])
    STARTUP.mark("topics")
    settings = WorkerSettings(
        bootstrap=bootstrap,
        topics=topics,
        group=group,
        snapshot_interval=snapshot_interval,
        security=security,
        state_dir=Path(state_dir) if state_dir is not None else None,
        # The join stage reads what it needs from these settings; the worker of "all" decides.
        stage="decide" if stage in ("all", "join") else stage,
    )
    metrics = Metrics(CollectorRegistry())
    if stage == "join":
        await _serve_join_stage(
            config, settings, metrics, web_host, web_port, stop, config_path, member, handle_signals
        )
        return
    join_stage: JoinStage | None = None
    if stage == "all":
        join_stage = JoinStage(config, settings, metrics)
        join_stage.local = LocalBatches()  # the decide stage below takes its batches
    metrics.init_labels(config.flags, {hook.format.value for hook in hooks})
    worker = Worker(
        config,
        settings,
        metrics=metrics,
        config_path=config_path,
        hooks=hooks,
        flagd_file=FlagdFile(flagd_file) if flagd_file is not None else None,
    )
    dispatcher = worker.hooks
    assert dispatcher is not None  # hooks were given
    auth = AdminAuth.from_env(env)
    if not auth.enabled:
        log.warning("admin API disabled: DRIFTSWITCH_ADMIN_TOKEN is not set")
    try:
        runner = await serve(worker, web_host, web_port, auth)
    except OSError as exc:  # taken between check_port and now
        raise StartupError(f"cannot listen on http://{web_host}:{web_port}: {exc}") from None
    log.info(
        "driftswitch %s worker: broker %s, HTTP http://%s:%d/healthz, flags on %s",
        stage,
        kafka.describe(),
        web_host,
        web_port,
        topics.flags.name,
    )
    loop = asyncio.get_running_loop()
    stops = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
    for sig in stops:
        loop.add_signal_handler(sig, worker.stop.set)
    reloads: set[asyncio.Future[object]] = set()

    async def reload() -> None:
        with contextlib.suppress(ConfigError):  # logged by the worker; the old config stays
            await worker.reload_config()

    def on_hup() -> None:
        task: asyncio.Future[object] = asyncio.ensure_future(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    if config_path is not None:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    watcher = None
    if stop is not None:
        watcher = asyncio.ensure_future(_forward(stop, worker.stop))
    if join_stage is not None:
        worker.join_stage = join_stage
        # One stop for both: the worker's stop (signals, ``stop``) also stops the join stage.
        stages: asyncio.Future[object] = asyncio.ensure_future(
            _forward(worker.stop, join_stage.stop)
        )
    try:
        async with dispatcher:
            if join_stage is None:
                await worker.run()
            else:
                joining = asyncio.ensure_future(join_stage.run())
                # A join stage that ends (an error) stops the worker too: the process exits
                # with that error instead of deciding on without input.
                joining.add_done_callback(lambda _: worker.stop.set())
                try:
                    await worker.run()
                finally:
                    join_stage.stop.set()
                    await joining
    finally:
        if join_stage is not None:
            stages.cancel()
        if watcher is not None:
            watcher.cancel()
        for sig in (*stops, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


async def _forward(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


async def _serve_join_stage(
    config: Config,
    settings: WorkerSettings,
    metrics: Metrics,
    web_host: str,
    web_port: int,
    stop: asyncio.Event | None,
    config_path: str | None,
    member: StageMember | None = None,
    handle_signals: bool = True,
) -> None:
    """A join-stage process: the stage, ``GET /healthz`` (its status) and ``GET /metrics``;
    SIGHUP re-reads ``config_path`` (restart it for changed topics or state settings).
    ``member``: the stage's group member, started early (:func:`serve_worker`)."""
    from aiohttp import web

    from driftswitch.streams.service.joinstage import JoinStage
    from driftswitch.streams.service.metrics import metrics_handler
    from driftswitch.streams.service.startup import STARTUP

    stage = JoinStage(config, settings, metrics)

    def refresh() -> None:
        status = stage.status()
        metrics.observe_join_stage(status)
        # The state gauges a single worker sets, from this process's partition stores.
        metrics.set_state(status["store_bytes"], stage.checkpoint_seconds, stage.recovery_seconds)

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response(stage.status())

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler(metrics, before_scrape=refresh))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, web_host, web_port).start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(f"cannot listen on http://{web_host}:{web_port}: {exc}") from None
    STARTUP.mark("http")
    log.info(
        "driftswitch join stage: group %s.join, HTTP http://%s:%d/healthz",
        settings.group,
        web_host,
        web_port,
    )
    loop = asyncio.get_running_loop()
    stops = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
    for sig in stops:
        loop.add_signal_handler(sig, stage.stop.set)
    reloads: set[asyncio.Future[object]] = set()

    async def reload() -> None:
        from driftswitch.streams.config.model import load_config
        from driftswitch.streams.contract.errors import ConfigError

        assert config_path is not None  # the handler is installed only with a path
        path: str = config_path
        try:
            config = await loop.run_in_executor(None, load_config, path)
        except ConfigError as err:
            log.error("config reload rejected, the old config stays: %s", "; ".join(err.problems))
            return
        await stage.reconfigure(config)

    def on_hup() -> None:
        task: asyncio.Future[object] = asyncio.ensure_future(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    if config_path is not None:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    watcher = asyncio.ensure_future(_forward(stop, stage.stop)) if stop is not None else None
    try:
        await stage.run(member)
    finally:
        if watcher is not None:
            watcher.cancel()
        for sig in (*stops, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
