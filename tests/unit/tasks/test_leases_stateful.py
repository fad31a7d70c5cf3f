"""Property test of the origin's lease table against a model of where task copies really are.

Hypothesis interleaves submissions, steals (some of whose responses are lost), racing steal
reports, starts, completions (ok, failed, retryable), retried and late Complete messages,
crashes, false death declarations, load reports, membership renewals and lease expiries.
After every step: no task is delivered twice, and every copy of a task's current attempt sits
where the origin believes its single owner is. At the end, once the cluster settles, every
task is delivered exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.leases import Action, Cancel, Deliver, LeaseTable, Requeue
from p2pagent.tasks.lifecycle import TaskEvent
from p2pagent.tasks.load import make_report
from p2pagent.tasks.spec import Task

ORIGIN = "o"
PEERS = ["a", "b", "c"]
CFG = TasksConfig(lease_s=10, handoff_grace_s=3, max_attempts=6, done_retention_s=1e9)


@dataclass
class Copy:
    task: Task
    node: str
    running: bool = False


@dataclass(frozen=True)
class Result:
    task_id: str
    attempt: int
    executor: str
    ok: bool
    code: str


class LeaseMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.lt = LeaseTable(ORIGIN, CFG)
        self.now = 0.0
        self.copies: dict[tuple[str, int], Copy] = {}
        self.results: list[Result] = []
        self.submitted: list[str] = []
        self.delivered: dict[str, int] = {}
        self.crashed: set[str] = set()
        self.seq = 0

    # ---- helpers -----------------------------------------------------------------------

    def apply(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Requeue):
                key = (a.task.task_id, a.task.attempt)
                assert key not in self.copies, "re-queued an attempt that already exists"
                self.copies[key] = Copy(a.task, ORIGIN)
            elif isinstance(a, Deliver):
                self.delivered[a.task_id] = self.delivered.get(a.task_id, 0) + 1
                assert self.delivered[a.task_id] == 1, f"{a.task_id} delivered twice"
            elif isinstance(a, Cancel) and a.node == ORIGIN:
                c = self.copies.get((a.task_id, a.attempt))
                if c is not None and c.node == ORIGIN and not c.running:
                    del self.copies[(a.task_id, a.attempt)]
            else:
                assert isinstance(a, TaskEvent | Cancel)

    def pick(self, i: int, pred: object = None) -> Copy | None:
        cands = [c for _, c in sorted(self.copies.items()) if pred is None or pred(c)]  # type: ignore[operator]
        return cands[i % len(cands)] if cands else None

    def report(self, node: str) -> None:
        self.seq += 1
        held = [c.task for c in self.copies.values() if c.node == node and not c.running]
        running = [c.task for c in self.copies.values() if c.node == node and c.running]
        self.apply(
            self.lt.on_report(make_report(node, self.seq, held, running, 1, 1.0, []), self.now)
        )

    def deliver_result(self, r: Result) -> None:
        out = self.lt.on_complete(
            r.task_id, r.attempt, r.executor, r.ok, self.now, error_code=r.code
        )
        self.apply(out.actions)

    # ---- rules -------------------------------------------------------------------------

    @rule()
    def submit(self) -> None:
        tid = f"t{len(self.submitted)}"
        task = Task(tid, ORIGIN, "m", 1.0)
        self.submitted.append(tid)
        self.apply(self.lt.submit(task, self.now))
        self.copies[(tid, 0)] = Copy(task, ORIGIN)

    @precondition(lambda self: self.copies)
    @rule(i=st.integers(0, 99), thief=st.sampled_from(PEERS), lost=st.booleans())
    def steal_from_origin(self, i: int, thief: str, lost: bool) -> None:
        c = self.pick(i, lambda c: c.node == ORIGIN and not c.running)
        if c is None or thief in self.crashed:
            return
        ok, actions = self.lt.on_stolen(c.task.task_id, c.task.attempt, ORIGIN, thief, self.now)
        self.apply(actions)
        if ok:
            del self.copies[(c.task.task_id, c.task.attempt)]
            if not lost:  # else the StealResponse never reached the thief
                self.copies[(c.task.task_id, c.task.attempt)] = Copy(c.task, thief)

    @precondition(lambda self: self.submitted)
    @rule(
        i=st.integers(0, 99),
        attempt=st.integers(0, 3),
        src=st.sampled_from(PEERS),
        dst=st.sampled_from([*PEERS, ORIGIN]),
    )
    def racing_steal_report(self, i: int, attempt: int, src: str, dst: str) -> None:
        """A victim other than the origin reports a hand-over (steal_foreign on)."""
        tid = self.submitted[i % len(self.submitted)]
        held = self.copies.get((tid, attempt))
        if held is not None and held.node == src and held.running:
            return  # a victim never hands over a task it is running
        before = self.lt.where(tid)
        ok, actions = self.lt.on_stolen(tid, attempt, src, dst, self.now)
        self.apply(actions)
        if not ok:
            return
        assert before is not None and before.holder == src and before.attempt == attempt
        assert not before.running
        c = self.copies.get((tid, attempt))
        if c is not None and c.node == src and not c.running:
            c.node = dst

    @precondition(lambda self: self.copies)
    @rule(i=st.integers(0, 99))
    def start(self, i: int) -> None:
        c = self.pick(i, lambda c: not c.running)
        if c is None:
            return
        c.running = True
        if c.node == ORIGIN:
            self.apply(self.lt.on_started(c.task.task_id, c.task.attempt, ORIGIN, self.now))

    @precondition(lambda self: self.copies)
    @rule(
        i=st.integers(0, 99),
        outcome=st.sampled_from(["ok", "ok", "ok", "INTERNAL", "UNAVAILABLE"]),
        send=st.booleans(),
    )
    def finish(self, i: int, outcome: str, send: bool) -> None:
        c = self.pick(i, lambda c: c.running)
        if c is None:
            return
        del self.copies[(c.task.task_id, c.task.attempt)]
        ok = outcome == "ok"
        r = Result(c.task.task_id, c.task.attempt, c.node, ok, "" if ok else outcome)
        self.results.append(r)
        if send or c.node == ORIGIN:  # a local result is a call, never lost
            self.deliver_result(r)

    @precondition(lambda self: self.results)
    @rule(i=st.integers(0, 99))
    def resend_result(self, i: int) -> None:
        """A retried, delayed or duplicated Complete."""
        self.deliver_result(self.results[i % len(self.results)])

    @rule(node=st.sampled_from(PEERS), declare=st.booleans())
    def crash(self, node: str, declare: bool) -> None:
        for key in [k for k, c in self.copies.items() if c.node == node]:
            del self.copies[key]
        self.crashed.add(node)
        if declare:
            self.apply(self.lt.on_member_dead(node, self.now))

    @rule(node=st.sampled_from(PEERS))
    def falsely_declared_dead(self, node: str) -> None:
        self.apply(self.lt.on_member_dead(node, self.now))

    @rule(node=st.sampled_from(PEERS))
    def restart(self, node: str) -> None:
        self.crashed.discard(node)

    @rule(node=st.sampled_from(PEERS))
    def load_report(self, node: str) -> None:
        if node not in self.crashed:
            self.report(node)

    @rule(node=st.sampled_from(PEERS))
    def membership_alive(self, node: str) -> None:
        if node not in self.crashed:
            self.lt.renew_node(node, self.now)

    @rule(dt=st.sampled_from([0.5, 2.0, 4.0, 11.0]))
    def advance(self, dt: float) -> None:
        self.now += dt
        self.apply(self.lt.tick(self.now))

    # ---- invariants --------------------------------------------------------------------

    @invariant()
    def single_owner(self) -> None:
        for (tid, attempt), c in self.copies.items():
            loc = self.lt.where(tid)
            if loc is None or loc.attempt != attempt:
                continue  # a stale copy: its result will be discarded or win the race
            assert c.node == loc.holder, f"{tid}#{attempt} runs on {c.node}, owner {loc.holder}"

    @invariant()
    def finished_tasks_are_final(self) -> None:
        for tid in self.delivered:
            assert self.lt.where(tid) is None and self.lt.is_done(tid)
            assert self.lt.lifecycle.last(tid).state.terminal

    def teardown(self) -> None:
        # Let the cluster settle: nodes restart, run what they hold, results get through,
        # reports flow and leases expire. Every task must end up delivered exactly once.
        self.crashed.clear()
        for _ in range(3 * CFG.max_attempts):
            if not len(self.lt):
                break
            for c in list(self.copies.values()):
                c.running = True
                self.finish(0, "ok", True)
            for node in PEERS:
                self.report(node)
            self.now += CFG.handoff_grace_s + 0.1
            for node in PEERS:
                self.report(node)
            self.now += CFG.lease_s + 1
            for node in PEERS:
                # Membership keeps saying every node is alive: only the reports can tell
                # that a hand-over was lost.
                self.lt.renew_node(node, self.now)
            self.apply(self.lt.tick(self.now))
        assert len(self.lt) == 0, "tasks stranded"
        assert sorted(self.delivered) == sorted(self.submitted)
        assert set(self.delivered.values()) <= {1}


LeaseMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=30, deadline=None, derandomize=True
)
TestLeaseMachine = LeaseMachine.TestCase
