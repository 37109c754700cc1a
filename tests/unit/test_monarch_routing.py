"""The Service's routing and failure bookkeeping, with fake replicas (no processes).

The real thing — processes, a killed replica, respawn — is in
tests/integration/test_monarch_service.py; here the decisions are checked one by one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from forge_env import ForgeEnvError
from forge_env.monarch import ReplicaDiedError, ServiceConfig, ServiceTimeoutError, ServiceUnavailableError
from forge_env.monarch._service import Replica, Service, _Router, _Slot

# Service.start installs Monarch's fault hook (the replicas themselves are fakes).
pytest.importorskip("monarch", reason="runtime: monarch needs torchmonarch: pip install 'forge-env[monarch]'")


def slots(*in_flight: int, unhealthy: tuple[int, ...] = ()) -> list[_Slot]:
    return [_Slot(index=i, healthy=i not in unhealthy, in_flight=n) for i, n in enumerate(in_flight)]


# --- the router --------------------------------------------------------------------------------


def test_round_robin_takes_the_healthy_replicas_in_turn() -> None:
    router = _Router("round_robin")
    assert [router.pick(slots(0, 0, 0)) for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    assert [router.pick(slots(0, 0, 0, unhealthy=(1,))) for _ in range(4)] == [0, 2, 0, 2]


def test_least_loaded_picks_the_idle_replica() -> None:
    router = _Router("least_loaded")
    assert router.pick(slots(3, 0, 2)) == 1
    assert router.pick(slots(3, 5, 2)) == 2
    # Ties are shared out, not always given to replica 0.
    assert {router.pick(slots(0, 0)) for _ in range(4)} == {0, 1}


def test_sticky_keeps_a_session_on_its_replica_until_it_dies() -> None:
    router = _Router("sticky")
    first = router.pick(slots(0, 0), session="ep1")
    assert first is not None
    # Load does not move a session once it is placed.
    busy = slots(0, 0)
    busy[first].in_flight = 10
    assert all(router.pick(busy, session="ep1") == first for _ in range(5))
    # A new session goes to the least-loaded replica.
    assert router.pick(busy, session="ep2") == 1 - first
    # Its replica died: the session moves and stays on the new one.
    moved = router.pick(slots(0, 0, unhealthy=(first,)), session="ep1")
    assert moved == 1 - first
    assert router.pick(slots(0, 0), session="ep1") == moved
    # No session key: least loaded.
    assert router.pick(slots(4, 1)) == 1


def test_sticky_forgets_the_oldest_sessions_past_max_sessions() -> None:
    router = _Router("sticky", max_sessions=3)
    for key in "abcd":
        router.pick(slots(0, 0), session=key)
    assert router.sessions == 3
    assert router.session_replica("a") is None and router.session_replica("d") is not None


def test_excluded_and_unhealthy_replicas_are_never_picked() -> None:
    for routing in ("round_robin", "least_loaded", "sticky"):
        router = _Router(routing)  # type: ignore[arg-type]
        assert router.pick(slots(0, 0), session="s", exclude=frozenset({0})) == 1
        assert router.pick(slots(0, 0, unhealthy=(0, 1))) is None


def test_service_config_rejects_bad_values_with_the_field_name() -> None:
    with pytest.raises(ValueError, match="replicas"):
        ServiceConfig(replicas=0)
    with pytest.raises(ValueError, match="routing"):
        ServiceConfig(routing="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="call_timeout_s"):
        ServiceConfig(call_timeout_s=0)
    assert issubclass(ServiceUnavailableError, ForgeEnvError)


# --- the service with fake replicas ------------------------------------------------------------


class SupervisionError(RuntimeError):
    """Named like Monarch's: the Service recognises a dead replica by it."""


class ActorError(Exception):
    """Named like Monarch's wrapper of an exception raised inside an endpoint."""

    def __init__(self, exception: BaseException) -> None:
        super().__init__(str(exception))
        self.exception = exception


class FakeGroup:
    def __init__(self, pid: int) -> None:
        self.pids = [pid]
        self.dead = False
        self.stopped = False

    async def ping(self, *, timeout_s: float = 10.0) -> list[int]:
        if self.dead:
            raise SupervisionError("the process this actor was running on failed: Killed(sig=9)")
        return self.pids

    async def stop(self, **_: Any) -> None:
        self.stopped = True


class FakePort:
    def __init__(self, replica: "FakeActor", name: str) -> None:
        self.replica, self.name = replica, name

    async def call_one(self, *args: Any, **kwargs: Any) -> Any:
        actor = self.replica
        actor.calls.append(self.name)
        if self.name == "slow":
            await asyncio.sleep(args[0])
        if self.name == "hang_if_dead" and actor.group.dead:
            await asyncio.sleep(60)  # a dead process that Monarch has not reported yet
        if actor.group.dead:
            raise SupervisionError("the actor and all its descendants have failed")
        if self.name == "boom":
            raise ActorError(ValueError("bad input"))
        return actor.group.pids[0]


class FakeActor:
    def __init__(self, group: FakeGroup) -> None:
        self.group = group
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> FakePort:
        return FakePort(self, name)


class FakeService(Service[Any]):
    """A Service whose replicas are fakes; a respawn makes a new fake after ``respawn_delay``."""

    respawn_delay = 0.05
    fail_respawns = False

    async def _launch(self, index: int, *, generation: int) -> Replica:
        if generation > 0:
            await asyncio.sleep(self.respawn_delay)
            if self.fail_respawns:
                raise RuntimeError("no room for a new process")
        group = FakeGroup(pid=1000 * (generation + 1) + index)
        replica = Replica(index, generation, group, FakeActor(group), procs=1)  # type: ignore[arg-type]
        if generation > 0 and self._on_respawn is not None:
            await self._on_respawn(replica)
        return replica


async def fake_service(**config: Any) -> FakeService:
    service = await FakeService.start(object, config=ServiceConfig(health_check_interval_s=0, **config), name="fake")
    assert isinstance(service, FakeService)
    return service


def kill(service: Service[Any], index: int) -> None:
    replica = service.replicas[index]
    assert replica is not None
    group: Any = replica.group
    group.dead = True


async def test_a_call_on_a_dead_replica_is_retried_once_on_a_healthy_one() -> None:
    service = await fake_service(replicas=2, routing="round_robin", respawn_attempts=1)
    kill(service, 0)
    answers = [await service.call("who") for _ in range(4)]
    # Replica 0's call failed, ran again on replica 1; after that only replica 1 is picked
    # until replica 0 is back (generation 1, pid 2000).
    assert answers[0] == 1001
    m = service.metrics
    assert m["service/fake/retries"] == 1 and m["service/fake/replica_deaths"] == 1
    await service.wait_healthy(timeout_s=5)
    assert service.metrics["service/fake/respawns"] == 1
    assert sorted({await service.call("who") for _ in range(4)}) == [1001, 2000]
    await service.stop()


async def test_an_endpoint_error_is_raised_as_is_and_not_retried() -> None:
    service = await fake_service(replicas=2)
    with pytest.raises(ValueError, match="bad input"):
        await service.call("boom")
    m = service.metrics
    assert m["service/fake/app_errors"] == 1 and m["service/fake/retries"] == 0
    assert m["service/fake/healthy"] == 2
    await service.stop()


async def test_max_retries_zero_raises_replica_died() -> None:
    service = await fake_service(replicas=2, max_retries=0, respawn=False)
    kill(service, 0)
    kill(service, 1)
    with pytest.raises(ReplicaDiedError, match="max_retries=0"):
        await service.call("who", session="s")
    await service.stop()


async def test_no_replica_left_with_respawn_off_names_the_role_and_the_fix() -> None:
    service = await fake_service(replicas=2, respawn=False)
    kill(service, 0)
    kill(service, 1)
    with pytest.raises(ReplicaDiedError):  # the call found replica 0 dead, then replica 1
        await service.call("who")
    with pytest.raises(ServiceUnavailableError) as info:
        await service.call("who")
    message = str(info.value)
    assert "fake" in message and "no replica" in message and "respawn is off" in message
    assert service.replica_states() == ["failed", "failed"]
    await service.stop()


async def test_calls_wait_for_a_respawn_when_every_replica_is_down() -> None:
    service = await fake_service(replicas=1)
    kill(service, 0)
    # The call fails on generation 0, waits for generation 1, and is answered by it.
    assert await service.call("who") == 2000
    assert service.metrics["service/fake/retries"] == 1
    await service.stop()


async def test_failed_respawns_end_in_service_unavailable() -> None:
    service = await fake_service(replicas=1, respawn_attempts=1)
    service.fail_respawns = True
    kill(service, 0)
    with pytest.raises(ServiceUnavailableError, match="respawn attempt 1 failed"):
        await service.call("who")
    assert service.metrics["service/fake/respawn_failures"] == 1
    await service.stop()


async def test_on_respawn_runs_before_the_replica_serves() -> None:
    seen: list[int] = []

    async def catch_up(replica: Replica) -> None:
        seen.append(replica.generation)

    service = await FakeService.start(
        object, config=ServiceConfig(replicas=1, health_check_interval_s=0), name="fake", on_respawn=catch_up
    )
    kill(service, 0)
    await service.call("who")
    assert seen == [1]
    await service.stop()


async def test_broadcast_skips_a_replica_that_died_and_respawns_it() -> None:
    service = await fake_service(replicas=3)
    kill(service, 1)
    assert await service.broadcast("who") == [0 + 1000, 2 + 1000]
    await service.wait_healthy(timeout_s=5)
    assert await service.broadcast("who") == [1000, 2001, 1002]
    await service.stop()


async def test_broadcast_each_pairs_every_answer_with_the_replica_that_gave_it() -> None:
    # Answers are the fake replicas' pids (1000 + index, then 2000 + index after a respawn);
    # on several hosts pids repeat, so a caller must get the replica itself.
    service = await fake_service(replicas=3)
    kill(service, 1)
    pairs = await service.broadcast_each("who")
    assert [(r.index, r.generation, answer) for r, answer in pairs] == [(0, 0, 1000), (2, 0, 1002)]
    await service.wait_healthy(timeout_s=5)
    pairs = await service.broadcast_each("who")
    assert [(r.index, r.generation, answer) for r, answer in pairs] == [(0, 0, 1000), (1, 1, 2001), (2, 0, 1002)]
    await service.stop()


async def test_health_checks_find_a_dead_idle_replica() -> None:
    service = await FakeService.start(
        object, config=ServiceConfig(replicas=2, health_check_interval_s=0.02), name="fake"
    )
    kill(service, 1)
    await asyncio.sleep(0.2)
    m = service.metrics
    assert m["service/fake/replica_deaths"] == 1 and m["service/fake/respawns"] == 1
    assert m["service/fake/replica1/generation"] == 1
    await service.stop()


async def test_a_stopped_service_refuses_calls() -> None:
    service = await fake_service(replicas=1)
    await service.stop()
    await service.stop()  # idempotent
    with pytest.raises(ServiceUnavailableError, match="stopped"):
        await service.call("who")


async def test_a_slow_call_on_a_live_replica_times_out_without_a_retry() -> None:
    service = await fake_service(replicas=2, call_timeout_s=0.05)
    with pytest.raises(ServiceTimeoutError, match="alive"):
        await service.call("slow", 1.0)
    m = service.metrics
    assert m["service/fake/timeouts"] == 1 and m["service/fake/retries"] == 0 and m["service/fake/healthy"] == 2
    await service.stop()


async def test_a_timed_out_call_on_a_dead_replica_is_retried() -> None:
    service = await fake_service(replicas=2, routing="round_robin", call_timeout_s=0.05)
    kill(service, 0)
    assert await service.call("hang_if_dead") == 1001
    m = service.metrics
    assert m["service/fake/retries"] == 1 and m["service/fake/replica_deaths"] == 1
    await service.stop()
