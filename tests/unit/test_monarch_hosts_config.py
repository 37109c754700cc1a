"""HostsConfig parsing and checks, SLURM node lists, placement rules, the worker's address and
the app's ``monarch.hosts`` key: plain Python, no Monarch process starts."""

from __future__ import annotations

import pytest

from forge_env.monarch._hosts import (
    DEFAULT_PORT,
    HostsConfig,
    expand_nodelist,
    host_of,
    machine_id,
    replica_host,
    spread,
)
from forge_env.monarch._service import ServiceConfig
from forge_env.monarch.worker import main as worker_main
from forge_env.monarch.worker import worker_address

A, B = "tcp://node1:26600", "tcp://10.0.0.6:26601"


# --- parsing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "local", "", "  local ", HostsConfig()])
def test_local_forms(value: object) -> None:
    cfg = HostsConfig.parse(value)
    assert cfg.local and cfg == HostsConfig() and cfg.on_this_machine()


@pytest.mark.parametrize("value", [
    [A, B], (A, B), f"{A},{B}", f" {A} , {B} ", {"workers": [A, B]}, {"workers": f"{A},{B}"},
])
def test_worker_forms(value: object) -> None:
    cfg = HostsConfig.parse(value)
    assert cfg.workers == (A, B) and not cfg.local and cfg.addresses() == (A, B)


def test_mapping_sets_every_field() -> None:
    cfg = HostsConfig.parse({"workers": [A], "client_host": "10.0.0.1", "attach_timeout_s": 5})
    assert (cfg.workers, cfg.client_host, cfg.attach_timeout_s) == ((A,), "10.0.0.1", 5)
    assert HostsConfig.parse({"slurm_port": 1234}).slurm_port == 1234


def test_ipv6_and_names() -> None:
    cfg = HostsConfig(workers=("tcp://[fd00::5]:26600", "tcp://gpu-node_7.cluster.local:1"))
    assert [host_of(a) for a in cfg.workers] == ["fd00::5", "gpu-node_7.cluster.local"]


@pytest.mark.parametrize(("value", "expected"), [
    ("tcp://node1", r"hosts: workers\[0\]: 'tcp://node1' is not a worker address; write tcp://HOST:PORT"),
    (["http://node1:80"], r"workers\[0\]: 'http://node1:80' is not a worker address"),
    ([A, "node2:26600"], r"workers\[1\]: 'node2:26600' is not a worker address"),
    (["tcp://node1:0"], r"port 0; a port is 1-65535"),
    (["tcp://node1:70000"], r"port 70000; a port is 1-65535"),
    ([A, A], r"workers\[1\]: 'tcp://node1:26600' is listed twice \(also at \[0\]\)"),
    ({"workers": [A], "slurm_port": 5}, r"either workers .* or slurm_port"),
    ({"wrkers": [A]}, r"unknown key\(s\) \['wrkers'\]; the keys are \['workers'"),
    ({"workers": [A], "attach_timeout_s": 0}, r"attach_timeout_s must be > 0"),
    ({"workers": [A], "attach_timeout_s": "5"}, r"attach_timeout_s must be > 0, got '5'"),
    ({"workers": [A], "client_host": "tcp://10.0.0.1:0"}, r"client_host must be an IP address or a host name"),
    ({"slurm_port": 0}, r"slurm_port must be a port number 1-65535"),
    ("slurm:x", r"'slurm:x': write slurm or slurm:PORT"),
    (5, r"expected 'local', a list of tcp://HOST:PORT worker addresses, 'slurm\[:PORT\]' or a mapping, got 5"),
    ([A, 7], r"a list of hosts holds tcp://HOST:PORT strings"),
])
def test_bad_values_name_the_key_and_the_fix(value: object, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        HostsConfig.parse(value)


def test_errors_name_the_given_key_or_none() -> None:
    with pytest.raises(ValueError, match=r"^monarch\.hosts: workers\[0\]"):
        HostsConfig.parse(["x"], key="monarch.hosts")
    with pytest.raises(ValueError, match=r"^workers\[0\]"):
        HostsConfig.parse(["x"], key=None)
    with pytest.raises(ValueError, match=r"^HostsConfig\.workers\[0\]"):  # built directly
        HostsConfig(workers=("x",))
    with pytest.raises(ValueError, match="must be a list"):
        HostsConfig(workers=A)  # type: ignore[arg-type]  # a string, not a list of them


def test_local_config_has_no_addresses() -> None:
    with pytest.raises(ValueError, match="no worker addresses"):
        HostsConfig().addresses()


def test_on_this_machine_only_for_loopback_workers() -> None:
    assert HostsConfig(workers=("tcp://127.0.0.1:1", "tcp://localhost:2", "tcp://[::1]:3")).on_this_machine()
    assert not HostsConfig(workers=("tcp://127.0.0.1:1", A)).on_this_machine()
    assert not HostsConfig(slurm_port=DEFAULT_PORT).on_this_machine()


# --- SLURM -----------------------------------------------------------------------------------------


def test_slurm_reads_the_allocations_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[01-02],cpu7")
    cfg = HostsConfig.parse("slurm")
    assert cfg.slurm_port == DEFAULT_PORT
    assert cfg.addresses() == ("tcp://gpu01:26600", "tcp://gpu02:26600", "tcp://cpu7:26600")
    assert HostsConfig.parse("slurm:7000").addresses()[0] == "tcp://gpu01:7000"


def test_slurm_outside_an_allocation_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    monkeypatch.delenv("SLURM_NODELIST", raising=False)
    with pytest.raises(ValueError, match=r"SLURM_JOB_NODELIST, which is not set: run inside a SLURM allocation"):
        HostsConfig.parse("slurm").addresses()


@pytest.mark.parametrize(("nodelist", "expected"), [
    ("node1", ["node1"]),
    ("node1,node2", ["node1", "node2"]),
    ("gpu[01-03,07],login5", ["gpu01", "gpu02", "gpu03", "gpu07", "login5"]),
    ("n[8-11]", ["n8", "n9", "n10", "n11"]),
    ("n[098-101]", ["n098", "n099", "n100", "n101"]),
    ("rack[1-2]-n[8-9]", ["rack1-n8", "rack1-n9", "rack2-n8", "rack2-n9"]),
    ("a[1],b[2-3].x", ["a1", "b2.x", "b3.x"]),
])
def test_expand_nodelist(nodelist: str, expected: list[str]) -> None:
    assert expand_nodelist(nodelist) == expected


@pytest.mark.parametrize(("nodelist", "expected"), [
    ("gpu[01-03", "'\\[' without '\\]'"),
    ("gpu01]", "'\\]' without '\\['"),
    ("gpu[3-1]", "counts down"),
    ("gpu[a-b]", "bad range"),
])
def test_bad_nodelists(nodelist: str, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        expand_nodelist(nodelist)


# --- placement -------------------------------------------------------------------------------------


def test_replicas_go_round_the_hosts() -> None:
    assert [replica_host(i, 2) for i in range(5)] == [0, 1, 0, 1, 0]
    assert [replica_host(i, 1) for i in range(3)] == [0, 0, 0]
    with pytest.raises(ValueError):
        replica_host(0, 0)


@pytest.mark.parametrize(("procs", "hosts", "expected"), [
    (2, 2, [1, 1]), (4, 2, [2, 2]), (3, 2, [2, 1]), (5, 3, [2, 2, 1]), (1, 3, [1, 0, 0]), (8, 1, [8]),
])
def test_learner_ranks_spread_evenly(procs: int, hosts: int, expected: list[int]) -> None:
    counts = spread(procs, hosts)
    assert counts == expected and sum(counts) == procs


def test_machine_id_is_stable_in_one_process() -> None:
    assert machine_id() == machine_id() and "/" in machine_id()


# --- where the config goes -------------------------------------------------------------------------


def test_service_config_takes_hosts() -> None:
    assert ServiceConfig().hosts.local
    assert ServiceConfig(hosts=HostsConfig(workers=(A,))).hosts.workers == (A,)
    with pytest.raises(TypeError, match="ServiceConfig.hosts must be a HostsConfig"):
        ServiceConfig(hosts=[A])  # type: ignore[arg-type]


def test_worker_address_and_cli_checks() -> None:
    assert worker_address("127.0.0.1", 26600) == "tcp://127.0.0.1:26600"
    assert worker_address("node1", 5, "0.0.0.0") == "tcp://node1:5@tcp://0.0.0.0:5"
    assert worker_address("node1", 5, "node1") == "tcp://node1:5"
    assert worker_address("fd00::1", 5, "::") == "tcp://[fd00::1]:5@tcp://[::]:5"
    with pytest.raises(SystemExit):
        worker_main(["--port", "0"])


def test_app_config_key() -> None:
    from apps.agent_grpo._config import ConfigError, load_config

    assert load_config().monarch.hosts_config().local
    cfg = load_config(overrides=[f"monarch.hosts=[{A}, {B}]"])
    assert cfg.monarch.hosts_config().workers == (A, B)
    assert load_config(overrides=[f"monarch.hosts={A},{B}"]).monarch.hosts_config().workers == (A, B)
    with pytest.raises(ConfigError, match=r"monarch.hosts: workers\[0\]: 'tcp://node1' is not a worker address"):
        load_config(overrides=["monarch.hosts=tcp://node1"])
    with pytest.raises(ConfigError, match=r"monarch.hosts: unknown key\(s\) \['wrkers'\]"):
        load_config(overrides=[f"monarch.hosts={{wrkers: [{A}]}}"])


def test_generator_weight_transport_follows_the_hosts(tiny_model_path: str) -> None:
    pytest.importorskip("monarch.actor", reason="Monarch is not installed: pip install 'forge-env[monarch]'")
    from forge_env.generator import TorchGeneratorConfig
    from forge_env.monarch._generator import MonarchGenerator

    spec = TorchGeneratorConfig(model=tiny_model_path)
    remote = ServiceConfig(hosts=HostsConfig(workers=(A, B)))
    loopback = ServiceConfig(hosts=HostsConfig(workers=("tcp://127.0.0.1:26600",)))
    # No process starts: the transport is chosen from the config (RDMA first where there is hardware).
    assert MonarchGenerator(spec, service=remote).weight_transport in ("message", "rdma")
    assert MonarchGenerator(spec, service=remote, weights_dir="/shared/w").weight_transport in ("shm", "rdma")
    assert MonarchGenerator(spec, service=loopback).weight_transport in ("shm", "rdma")
    with pytest.raises(ValueError, match="replicas on other hosts .* give weights_dir= a folder every host mounts"):
        MonarchGenerator(spec, service=remote, weight_transport="shm")
