"""An in-memory ``PeerTransport``: task drivers in one process call each other's ``Peer``
handlers directly, with the same request checks and answers as over gRPC, and no network.

Tests join drivers with one :class:`MemoryPeers` hub (and :class:`MemoryHints` for their load
hints) (``hub.join(driver)``); a driver not
joined, or cut off with ``hub.cut(name)``, is unreachable (``Unavailable``), as a dead or
partitioned peer is. Messages go through their protobuf form both ways, so what one driver
sends is exactly what another would receive from the wire.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from p2pagent._proto import peer_pb2
from p2pagent.errors import P2PAgentError, Unavailable
from p2pagent.membership.hints import LoadHint
from p2pagent.tasks.load import LoadReport
from p2pagent.tasks.results import TaskResult
from p2pagent.tasks.spec import Task
from p2pagent.tasks.wire import (
    decode_report,
    encode_report,
    result_to_proto,
    task_to_spec,
    tasks_or_errors,
)

if TYPE_CHECKING:
    from p2pagent.tasks.driver import TasksDriver


class MemoryPeers:
    """A hub of drivers by name; ``link(caller)`` is the transport one of them uses."""

    def __init__(self) -> None:
        self._drivers: dict[str, TasksDriver] = {}
        self._cut: set[str] = set()
        #: Every call made, as (method, caller, callee), for tests to inspect.
        self.calls: list[tuple[str, str, str]] = []

    def join(self, driver: TasksDriver) -> None:
        self._drivers[driver.name] = driver

    def cut(self, name: str) -> None:
        """``name`` stops answering (and calling): as if it died or was partitioned off."""
        self._cut.add(name)

    def heal(self, name: str) -> None:
        self._cut.discard(name)

    def link(self, caller: str) -> MemoryLink:
        return MemoryLink(self, caller)

    def reach(self, method: str, caller: str, callee: str) -> TasksDriver:
        self.calls.append((method, caller, callee))
        driver = self._drivers.get(callee)
        if driver is None or callee in self._cut or caller in self._cut:
            raise Unavailable(f"{callee} is not a reachable member")
        return driver


class MemoryLink:
    """The ``PeerTransport`` of driver ``caller`` on a :class:`MemoryPeers` hub."""

    def __init__(self, hub: MemoryPeers, caller: str) -> None:
        self._hub = hub
        self._caller = caller

    async def assign(self, node: str, task: Task, within_s: float) -> bool:
        driver = self._hub.reach("assign", self._caller, node)
        resp = driver.handle_assign(peer_pb2.AssignRequest(task=task_to_spec(task)))
        return bool(resp.accepted)

    async def steal(
        self,
        victim: str,
        thief: str,
        max_tasks: int,
        models: Sequence[str],
        thief_speed: float,
        within_s: float,
    ) -> list[Task | P2PAgentError]:
        driver = self._hub.reach("steal", self._caller, victim)
        request = peer_pb2.StealRequest(
            thief=thief, max_tasks=max_tasks, models=list(models), thief_speed=thief_speed
        )
        resp = driver.handle_steal(request, self._caller, within_s)
        return tasks_or_errors(resp.tasks)

    async def complete(self, origin: str, result: TaskResult, within_s: float) -> bool:
        driver = self._hub.reach("complete", self._caller, origin)
        resp = await driver.handle_complete(result_to_proto(result), self._caller)
        return bool(resp.accepted)

    async def load(self, peer: str, report: LoadReport, within_s: float) -> LoadReport:
        driver = self._hub.reach("load", self._caller, peer)
        return decode_report(driver.handle_load(encode_report(report), self._caller))


class MemoryHints:
    """Load hints between drivers in one process, as membership gossip delivers them: each
    published hint numbered newer than the last of its node and handed to every other
    subscriber at once. ``channel(name)`` is the ``HintChannel`` of driver ``name``."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[Callable[[LoadHint], None]]] = {}
        self._seq: dict[str, int] = {}

    def channel(self, name: str) -> MemoryHintChannel:
        return MemoryHintChannel(self, name)

    def publish(self, node: str, hint: LoadHint) -> None:
        self._seq[node] = self._seq.get(node, 0) + 1
        stamped = dataclasses.replace(hint, node=node, seq=self._seq[node])
        for name, listeners in list(self._listeners.items()):
            if name != node:
                for listener in list(listeners):
                    listener(stamped)

    def subscribe(self, node: str, listener: Callable[[LoadHint], None]) -> Callable[[], None]:
        self._listeners.setdefault(node, []).append(listener)
        return lambda: self._listeners[node].remove(listener)


class MemoryHintChannel:
    def __init__(self, hub: MemoryHints, name: str) -> None:
        self._hub = hub
        self._name = name

    def publish_load_hint(self, hint: LoadHint, urgent: bool = False) -> None:
        self._hub.publish(self._name, hint)

    def subscribe_hints(self, listener: Callable[[LoadHint], None]) -> Callable[[], None]:
        return self._hub.subscribe(self._name, listener)
