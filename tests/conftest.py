"""Shared pytest fixtures: the embedded broker for integration tests, and a no-orphan guard.

The ``broker`` fixture is session-scoped and lazy: the first test that asks for it starts one
Tansu broker for the whole run; unit tests never ask, so ``pytest tests/unit`` starts none.
Tests that use it are marked ``broker`` automatically (``-m "not broker"`` deselects them).

Every process this run starts inherits ``DRIFTSWITCH_TEST_RUN`` (a random id). At the end of
the session any Tansu broker still alive with that id in its environment — started by a test,
a fixture or a subprocess of one — fails the run and is killed.

Linear algebra runs on one thread (``OPENBLAS_NUM_THREADS=1`` and the like, unless already set):
the detectors' calibrations solve many small Markov-chain systems, where OpenBLAS's thread pool
costs about five times the CPU of one thread on a busy machine. Set before anything imports
numpy, it holds for the test processes and every subprocess they start.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.kafka import ensure_topics
from driftswitch.streams.tools.broker import EmbeddedBroker

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

RUN_ID_VAR = "DRIFTSWITCH_TEST_RUN"
_topic_counter = itertools.count(1)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its reaper counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state letter follows the parenthesised command name, which may contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def tansu_processes(run_id: str) -> list[int]:
    """Pids of live Tansu brokers whose environment carries this test run's id."""
    marker = f"{RUN_ID_VAR}={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if "tansu" not in os.path.basename(argv[0].decode(errors="replace")):
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if marker in environ and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def pytest_configure(config: pytest.Config) -> None:
    # Keep an id inherited from an outer run (pytest inside pytest); else start a new one.
    run_id = os.environ.setdefault(RUN_ID_VAR, secrets.token_hex(8))
    # An xdist worker checks its own brokers only: the others may still be running theirs.
    worker = getattr(config, "workerinput", {}).get("workerid")
    if worker and not run_id.endswith(f"-{worker}"):
        os.environ[RUN_ID_VAR] = f"{run_id}-{worker}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.broker)
            # With ``--dist loadgroup`` (./run-tests), every broker test runs in one worker, on
            # one broker, one after another; the unit tests share the other workers.
            item.add_marker(pytest.mark.xdist_group("broker"))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """List the files tests named with ``record_artefact`` (tests/integration/conftest.py).

    Here, not beside the fixture: under xdist the controlling process loads only this conftest.
    """
    seen: list[str] = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            for name, value in getattr(report, "user_properties", ()):
                if name == "artefact" and value not in seen:
                    seen.append(value)
    for path in seen:
        terminalreporter.write_line(f"artefact: {path}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a broker started by it is still alive, after killing it."""
    leaked = tansu_processes(os.environ[RUN_ID_VAR])
    if not leaked:
        return
    for pid in leaked:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = f"Tansu broker process(es) outlived the test run (now killed): pids {leaked}"
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(f"ERROR: {message}", red=True, bold=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One embedded Tansu broker for the whole session (memory storage, loopback port)."""
    with EmbeddedBroker() as started:
        yield started


@pytest.fixture
def topics(broker: EmbeddedBroker) -> Topics:
    """driftswitch's five topics under a prefix unique to this test, created on ``broker``."""
    prefix = f"test{next(_topic_counter)}-{secrets.token_hex(3)}"
    created = Topics.with_prefix(prefix, partitions=4)
    asyncio.run(ensure_topics(broker.bootstrap, created))
    return created


@pytest.fixture
def alive() -> Callable[[int], bool]:
    """:func:`process_alive`, for tests that check no process is left behind."""
    return process_alive
