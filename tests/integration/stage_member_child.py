"""A stage group member in its own process, for tests that SIGKILL or SIGSTOP it.

``python stage_member_child.py BOOTSTRAP GROUP TOPIC[,TOPIC...] SESSION_TIMEOUT_MS [--commit]
[--freeze-after N]``

Prints one JSON object a line on stdout: ``{"assigned": [...], "generation": g, "member": id}``
and
``{"revoked": [...], "generation": g, "verdict": v}`` as the rebalance callbacks run (on
revocation it commits offset ``500 + index`` of each index in the first topic, as a runner's
final commit, and ``v`` says whether the coordinator accepted it). With ``--commit`` it also
commits, every 100 ms while it owns something, offset ``1000 + n`` (n = 0, 1, ...) of its lowest
index in the first topic and prints ``{"commit": offset, "index": i, "generation": g,
"started": t, "verdict": v}``, where
``t`` is ``time.monotonic()`` when the commit was sent (one clock for every process on the
machine), ``g`` the generation it believes it is in and ``v`` the
:class:`~driftswitch.streams.kafka.connect.Membership` value. With ``--freeze-after N`` it
prints ``{"freezing": g}`` and stops itself (SIGSTOP) after its N-th accepted commit, just
before the next one: a process paused at the worst moment, which sends a commit the instant it
is continued.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import orjson

from driftswitch.streams.kafka.groups import StageMember
from driftswitch.streams.kafka.settings import as_settings


def say(**fields: object) -> None:
    sys.stdout.write(orjson.dumps(fields).decode() + "\n")
    sys.stdout.flush()


async def main(
    bootstrap: str, group: str, topics: list[str], session_ms: int, commit: bool, freeze: int
) -> None:
    async def assigned(indexes: set[int]) -> None:
        say(assigned=sorted(indexes), generation=member.generation, member=member.member_id)

    async def revoked(indexes: set[int]) -> None:
        # A runner's final commit before handing its indexes over.
        verdict = await member.commit({(topics[0], i): 500 + i for i in indexes})
        say(revoked=sorted(indexes), generation=member.generation, verdict=verdict.value)

    member = StageMember(
        as_settings(bootstrap),
        group,
        topics,
        on_assigned=assigned,
        on_revoked=revoked,
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=500,
        fetch_max_wait_ms=100,
    )
    await member.start()
    n = accepted = 0
    while True:
        await member.getmany(timeout_ms=100)
        if commit and member.owned:
            if accepted == freeze:
                say(freezing=member.generation)
                os.kill(os.getpid(), signal.SIGSTOP)
            index = min(member.owned)
            generation = member.generation
            started = time.monotonic()
            verdict = await member.commit({(topics[0], index): 1000 + n})
            say(
                commit=1000 + n,
                index=index,
                generation=generation,
                started=started,
                verdict=verdict.value,
            )
            n += 1
            accepted += verdict.value == "current"
        await asyncio.sleep(0.1)


if __name__ == "__main__":
    args = sys.argv[1:]
    freeze = int(args[args.index("--freeze-after") + 1]) if "--freeze-after" in args else -1
    asyncio.run(
        main(args[0], args[1], args[2].split(","), int(args[3]), "--commit" in args[4:], freeze)
    )
