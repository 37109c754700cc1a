"""Generator replicas as Monarch actors: :class:`GeneratorActor` and :class:`MonarchGenerator`.

:class:`GeneratorActor` builds a :class:`~forge_env.generator.VLLMGenerator` or
:class:`~forge_env.generator.TorchGenerator` in its own process from its (picklable) config
and serves it through thin endpoints. :class:`MonarchGenerator` is a
:class:`~forge_env.generator.Generator` over a :class:`~forge_env.monarch.Service` of them:
``generate`` routes by episode (sticky: a multi-turn episode stays on one replica),
``update_weights`` pushes versioned weights to every replica, and a respawned replica loads
the latest weights before it serves again.

Weight transport (``MonarchGenerator(weight_transport=...)``; which one ran is in
``metrics["generator/weight_transport"]`` and :attr:`MonarchGenerator.weight_transport`):

- ``rdma``: one flat buffer registered with Monarch's RDMA (``monarch.rdma.RDMABuffer``); each
  replica reads it straight from the pusher's memory. ``auto`` picks it when ibverbs RDMA
  hardware is present.
- ``shm``: the weights are written once as safetensors under /dev/shm (or ``weights_dir``); each
  replica reads the file (a memory copy). ``auto`` picks it otherwise when the replicas can
  read this machine's files: they run on this host, or ``weights_dir`` is given (with worker
  hosts, it must be on a filesystem every host mounts).
- ``message``: the tensors travel pickled in the call, once per replica. ``auto`` picks it for
  replicas on other hosts (``ServiceConfig.hosts``) without a shared ``weights_dir``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from monarch.actor import Actor, concurrent_endpoint

from forge_env._scratch import ScratchFolder
from forge_env.generator import (
    Completion,
    Generator,
    GeneratorError,
    InFlightPolicy,
    SamplingParams,
    TorchGeneratorConfig,
    VLLMGeneratorConfig,
)
from forge_env.generator._folder import read_model_folder
from forge_env.monarch._service import Replica, Service, ServiceConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["GeneratorActor", "GeneratorSpec", "MonarchGenerator", "WeightTransport"]

logger = logging.getLogger(__name__)

GeneratorSpec = VLLMGeneratorConfig | TorchGeneratorConfig
"""What a :class:`GeneratorActor` builds: a VLLMGenerator's or a TorchGenerator's config
(plain picklable dataclasses, e.g. from the app's ``GeneratorSection.generator_config``)."""

WeightTransport = Literal["auto", "rdma", "shm", "message"]
_TRANSPORT_CODE = {"message": 0.0, "shm": 1.0, "rdma": 2.0}
_WEIGHTS_FILE = "model.safetensors"


# --- in the replica's process --------------------------------------------------------------------


def _build_generator(spec: GeneratorSpec) -> Generator:
    if isinstance(spec, VLLMGeneratorConfig):
        from forge_env.generator import VLLMGenerator

        return VLLMGenerator(spec)
    if isinstance(spec, TorchGeneratorConfig):
        from forge_env.generator import TorchGenerator

        return TorchGenerator(spec)
    raise TypeError(
        f"GeneratorActor needs a VLLMGeneratorConfig or TorchGeneratorConfig, got {type(spec).__name__}"
    )


def _safetensors_files(path: str, *, who: str) -> list[Path]:
    """``path`` itself (a safetensors file) or the ``*.safetensors`` files of the folder ``path``."""
    target = Path(path)
    files = sorted(target.glob("*.safetensors")) if target.is_dir() else [target]
    if not files or not all(f.is_file() for f in files):
        raise GeneratorError(
            f"{who}: no safetensors weights at {path!r}; pass a .safetensors file or a folder holding them "
            "(e.g. one written by Learner.save_hf), and keep it until the next push"
        )
    return files


def _read_safetensors(path: str) -> dict[str, "torch.Tensor"]:
    """Every tensor of a safetensors file, or of all ``*.safetensors`` files of a folder."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for file in _safetensors_files(path, who="load_weights_from"):
        tensors.update(load_file(str(file)))
    return tensors


@dataclasses.dataclass(frozen=True)
class _FlatLayout:
    """Where each tensor lies in a flat byte buffer (the RDMA transport)."""

    entries: tuple[tuple[str, str, tuple[int, ...], int, int], ...]
    """(name, dtype name, shape, byte offset, byte count) per tensor."""
    nbytes: int


def _flatten(tensors: Mapping[str, "torch.Tensor"]) -> tuple["torch.Tensor", _FlatLayout]:
    import torch

    entries = []
    offset = 0
    for name, tensor in tensors.items():
        count = tensor.numel() * tensor.element_size()
        entries.append((name, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), offset, count))
        offset += count
    flat = torch.empty(offset, dtype=torch.uint8)
    for (name, _, _, start, count), tensor in zip(entries, tensors.values()):
        flat[start:start + count] = tensor.contiguous().view(-1).view(torch.uint8)
    return flat, _FlatLayout(tuple(entries), offset)


def _unflatten(flat: "torch.Tensor", layout: _FlatLayout) -> dict[str, "torch.Tensor"]:
    import torch

    return {
        name: flat[start:start + count].view(getattr(torch, dtype)).reshape(shape)
        for name, dtype, shape, start, count in layout.entries
    }


class GeneratorActor(Actor):
    """A generator in its own process; endpoints are thin calls on the generator.

    Spawned by :class:`MonarchGenerator` (through a :class:`~forge_env.monarch.Service`);
    usable alone::

        procs = spawn_procs(1, name="gen")
        actor = procs.spawn("gen", GeneratorActor, TorchGeneratorConfig(model=path))
        await actor.start.call_one()
        out = await actor.generate.call_one([1, 2, 3], SamplingParams(max_tokens=8))

    Every endpoint is concurrent (``@concurrent_endpoint``): many ``generate`` calls batch
    inside the engine, and a weight update runs beside them under the generator's own
    :data:`~forge_env.generator.InFlightPolicy`.

    Args:
        spec: the generator's config (:data:`GeneratorSpec`).
        env: environment variables set in this process before the engine starts.
    """

    def __init__(self, spec: GeneratorSpec, env: Mapping[str, str] | None = None) -> None:
        for key, value in (env or {}).items():
            os.environ[key] = value
        self.spec = spec
        # Built here (cheap: reads the model folder) so a bad spec fails the spawn; the engine
        # itself starts in `start`, outside Monarch's actor-spawn deadline.
        self.generator = _build_generator(spec)

    def _info(self, **extra: Any) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": self.generator.version, **extra}

    @concurrent_endpoint
    async def start(self, seed: int | None = None) -> dict[str, Any]:
        """Start the engine; returns ``pid``, ``version``, ``max_model_len``, ``eos_token_ids``, ``start_s``.

        Args:
            seed: this replica's sampling seed, in place of ``spec.seed`` (replicas sampling
                from one seed would return the same "random" completions for the same prompt).
        """
        started = time.perf_counter()
        if seed is not None and seed != self.spec.seed:
            self.spec = dataclasses.replace(self.spec, seed=seed)
            self.generator = _build_generator(self.spec)
        await self.generator.start()
        return self._info(
            max_model_len=self.generator.max_model_len,
            eos_token_ids=tuple(self.generator.eos_token_ids),
            start_s=time.perf_counter() - started,
        )

    @concurrent_endpoint
    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Completion:
        return await self.generator.generate(prompt_ids, params)

    @concurrent_endpoint
    async def update_weights(
        self, tensors: Mapping[str, "torch.Tensor"], version: int, in_flight: InFlightPolicy | None = None
    ) -> dict[str, Any]:
        """Load weights sent in the message; returns ``pid``, ``version``, ``load_s``."""
        return await self._load(tensors, version, in_flight, time.perf_counter())

    @concurrent_endpoint
    async def load_weights_from(
        self, path: str, version: int, in_flight: InFlightPolicy | None = None
    ) -> dict[str, Any]:
        """Load the safetensors weights at ``path`` (a file or a folder on this host)."""
        started = time.perf_counter()
        tensors = await asyncio.to_thread(_read_safetensors, path)
        return await self._load(tensors, version, in_flight, started)

    @concurrent_endpoint
    async def load_weights_rdma(
        self, buffer: Any, layout: _FlatLayout, version: int, in_flight: InFlightPolicy | None = None
    ) -> dict[str, Any]:
        """Read the weights from an RDMA buffer (laid out by ``layout``) and load them."""
        import torch

        started = time.perf_counter()
        flat = torch.empty(layout.nbytes, dtype=torch.uint8)
        await buffer.read_into(flat)
        return await self._load(_unflatten(flat, layout), version, in_flight, started)

    async def _load(
        self, tensors: Mapping[str, "torch.Tensor"], version: int, in_flight: InFlightPolicy | None,
        started: float,
    ) -> dict[str, Any]:
        update: Any = self.generator.update_weights
        if in_flight is None:
            await update(tensors.items(), version)
        else:
            await update(tensors.items(), version, in_flight=in_flight)
        return self._info(load_s=time.perf_counter() - started)

    @concurrent_endpoint
    async def health(self) -> dict[str, Any]:
        """``pid``, ``version`` and the generator's metrics."""
        return self._info(metrics=dict(self.generator.metrics))

    @concurrent_endpoint
    async def close(self) -> None:
        """Stop the engine (its child processes with it)."""
        await self.generator.close()


# --- in the caller's process ---------------------------------------------------------------------


@dataclasses.dataclass
class _Latest:
    """The newest weights, kept so a respawned replica can load them before it serves."""

    version: int
    transport: str
    path: str | None = None
    tensors: dict[str, "torch.Tensor"] | None = None
    buffer: Any = None
    layout: _FlatLayout | None = None
    flat: Any = None  # the memory the RDMA buffer points at: kept alive with it


class MonarchGenerator(Generator):
    """A :class:`~forge_env.generator.Generator` whose engines run as replicas in their own processes.

    ``generate`` goes to one replica: sticky by the running episode
    (:data:`forge_env.rollout.current_episode`), so a multi-turn episode stays on one replica
    and keeps its prefix cache; calls outside an episode go to the least-loaded replica. A
    replica that dies is respawned; calls that were running on it are retried once on a
    healthy one (the Service's ``max_retries``). ``update_weights`` reaches every replica,
    stamped with ``version``; the respawned replica loads the latest weights (the same
    version) before it serves again. Each replica samples with its own seed
    (:meth:`replica_seed`), so replicas do not repeat each other's samples.

    Example::

        gen = MonarchGenerator(VLLMGeneratorConfig(model=path), service=ServiceConfig(replicas=2))
        async with gen:
            out = await gen.generate(prompt_ids, SamplingParams(max_tokens=16))
            await gen.update_weights(learner.hf_named_tensors(), version=1)
            print(gen.metrics["generator/push_s"], gen.weight_transport)

    Args:
        spec: each replica's generator config (:data:`GeneratorSpec`).
        service: replicas, routing (default sticky), health checks, respawn, retries.
        name: the Service's name (metrics ``service/<name>/...``, logs, errors).
        weight_transport: ``auto`` (RDMA with ibverbs hardware, else /dev/shm, else
            messages), or one of ``rdma``, ``shm``, ``message``.
        weights_dir: parent of the folder holding pushed weights (``shm`` transport and the
            latest weights kept for respawns); None = /dev/shm, else the temp dir. With replicas
            on other hosts (``service.hosts``), a folder on a filesystem they all mount makes
            ``auto`` use it (``shm``); without one, weights travel as messages.
        env: environment variables of the replicas' processes (e.g. ``OMP_NUM_THREADS``).

    Raises:
        GeneratorError: ``spec.model`` is not a model folder.
        ValueError: ``weight_transport="shm"`` with replicas on other hosts and no shared
            ``weights_dir``.
    """

    def __init__(
        self,
        spec: GeneratorSpec,
        *,
        service: ServiceConfig | None = None,
        name: str = "generator",
        weight_transport: WeightTransport = "auto",
        weights_dir: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if weight_transport not in get_args(WeightTransport):
            raise ValueError(f"weight_transport must be one of {get_args(WeightTransport)}, got {weight_transport!r}")
        self.spec = spec
        self.service_config = service or ServiceConfig(replicas=2, routing="sticky")
        if weight_transport == "shm" and weights_dir is None and not self.service_config.hosts.on_this_machine():
            raise ValueError(
                "weight_transport='shm' writes the weights under this machine's /dev/shm, which replicas on "
                "other hosts (service.hosts) cannot read: give weights_dir= a folder every host mounts, or "
                "use weight_transport='auto' (messages, or RDMA where there is hardware)"
            )
        self.name = name
        self._folder = read_model_folder(spec.model, who=type(spec).__name__)
        self._requested_transport = weight_transport
        self._transport = ""
        self._weights_base = weights_dir
        self._weights_dir: str | None = None
        self._scratch: ScratchFolder | None = None
        self._env = dict(env or {})
        self._service: Service[GeneratorActor] | None = None
        self._start_lock = asyncio.Lock()
        self._push_lock = asyncio.Lock()
        self._version = 0
        self._latest: _Latest | None = None
        self._loaded: dict[tuple[int, int], int] = {}  # (replica index, generation) -> version
        self._closed = False
        self._counters = dict.fromkeys(("requests", "tokens", "updates", "catch_ups"), 0.0)
        self._push_s = 0.0
        self._push_prepare_s = 0.0
        self._start_s = 0.0

    # --- contract ------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        return self._version

    @property
    def max_model_len(self) -> int:
        return int(self.spec.max_model_len)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self._folder.eos_token_ids

    @property
    def service(self) -> Service["GeneratorActor"]:
        """The Service of replicas (started by :meth:`start`)."""
        if self._service is None:
            raise RuntimeError("MonarchGenerator is not started: `await gen.start()` or `async with gen:`")
        return self._service

    @property
    def weight_transport(self) -> str:
        """The transport weight pushes use: ``rdma``, ``shm`` or ``message`` (after :meth:`start`)."""
        return self._transport or self._pick_transport()

    async def start(self) -> None:
        """Spawn the replicas and start their engines (in parallel). Idempotent.

        Raises:
            ServiceUnavailableError: a replica could not be started.
        """
        if self._closed:
            raise GeneratorError("this MonarchGenerator is closed; create a new one")
        async with self._start_lock:
            if self._service is not None:
                return
            started = time.perf_counter()
            self._transport = self._pick_transport()
            self._scratch = ScratchFolder.create(f"forge-env-{self.name}-push-", self._weights_base)
            self._weights_dir = self._scratch.path
            try:
                self._service = await Service.start(
                    GeneratorActor, self.spec, self._env, config=self.service_config, name=self.name,
                    on_start=self._start_replica, on_respawn=self._catch_up,
                )
            except BaseException:
                self._scratch.remove()
                raise
            self._start_s = time.perf_counter() - started

    def _pick_transport(self) -> str:
        if self._requested_transport != "auto":
            return self._requested_transport
        try:
            from monarch.rdma import get_rdma_backend

            if get_rdma_backend() == "ibverbs":
                return "rdma"
        except Exception as e:  # an RDMA-less build of Monarch
            logger.debug("no Monarch RDMA: %s", e)
        if not self.service_config.hosts.on_this_machine():
            # Replicas on other hosts read a file of ours only from a folder they all mount.
            return "shm" if self._weights_base is not None else "message"
        # The replicas run on this machine, so a file in memory reaches them all.
        return "shm" if os.path.isdir("/dev/shm") else "message"

    async def _start_replica(self, replica: Replica) -> None:
        info = await replica.call("start", self.replica_seed(replica.index, replica.generation))
        self._loaded[(replica.index, replica.generation)] = int(info["version"])

    def replica_seed(self, index: int, generation: int) -> int:
        """The sampling seed of replica ``index`` after ``generation`` respawns: distinct per
        replica (so that replicas do not draw the same samples) and reproducible."""
        return self.spec.seed + 10_000 * index + generation

    async def _catch_up(self, replica: Replica) -> None:
        """``on_respawn``: load the latest weights into a respawned replica before it serves."""
        async with self._push_lock:
            if self._latest is not None:
                await self._load_latest(replica)
                self._counters["catch_ups"] += 1

    async def _load_latest(self, replica: Replica) -> None:
        latest = self._latest
        assert latest is not None
        if latest.transport == "rdma":
            info = await replica.call("load_weights_rdma", latest.buffer, latest.layout, latest.version)
        elif latest.path is not None:
            info = await replica.call("load_weights_from", latest.path, latest.version)
        else:
            info = await replica.call("update_weights", latest.tensors, latest.version)
        if int(info["version"]) != latest.version:
            raise GeneratorError(
                f"replica {replica.index} reports version {info['version']} after loading version {latest.version}"
            )
        self._loaded[(replica.index, replica.generation)] = latest.version

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Completion:
        """Sample on one replica (sticky by the running episode); see :meth:`Generator.generate`.

        Raises:
            GeneratorError: the prompt or engine failed (raised by the replica).
            ServiceUnavailableError: every replica is gone and none could be respawned.
        """
        from forge_env.rollout import current_episode

        if self._closed:
            raise GeneratorError("this MonarchGenerator is closed; create a new one")
        await self.start()
        completion: Completion = await self.service.call(
            "generate", list(prompt_ids), params, session=current_episode.get()
        )
        self._counters["requests"] += 1
        self._counters["tokens"] += len(completion.token_ids)
        return completion

    async def update_weights(
        self,
        named_tensors: Iterable[tuple[str, "torch.Tensor"]] | Mapping[str, "torch.Tensor"],
        version: int,
        *,
        in_flight: InFlightPolicy | None = None,
        transport: WeightTransport | None = None,
    ) -> None:
        """Push a full set of weights (HF names) to every replica, stamped ``version``.

        The tensors are copied (fp32, CPU) before anything is sent; the copy, or the file it
        is written to, is kept until the next push so that a respawned replica loads it.

        Args:
            named_tensors: ``(name, tensor)`` pairs or a mapping, e.g. ``learner.hf_named_tensors()``.
            version: the policy version of these weights.
            in_flight: this update's :data:`~forge_env.generator.InFlightPolicy`; None = the spec's.
            transport: this push's transport; None = the generator's (:attr:`weight_transport`).

        Raises:
            GeneratorError: a replica refused the weights (names/shapes do not match).
            ServiceUnavailableError: no replica is left.
        """
        import torch

        if transport is not None and transport not in get_args(WeightTransport):
            raise ValueError(f"transport must be one of {get_args(WeightTransport)} or None, got {transport!r}")
        await self.start()
        items = named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors
        started = time.perf_counter()
        async with self._push_lock:
            tensors = await asyncio.to_thread(
                lambda: {n: t.detach().to(device="cpu", dtype=torch.float32).contiguous() for n, t in items}
            )
            how = self._transport if transport in (None, "auto") else transport
            latest = await asyncio.to_thread(self._prepare, tensors, version, how)
            if latest.transport == "rdma":
                from monarch.rdma import RDMABuffer

                latest.buffer = RDMABuffer(latest.flat)
            self._push_prepare_s = time.perf_counter() - started
            await self._push(latest, in_flight)
        self._push_s = time.perf_counter() - started

    async def load_weights_from(
        self, path: str | os.PathLike[str], version: int, *, in_flight: InFlightPolicy | None = None
    ) -> None:
        """Tell every replica to load the safetensors weights at ``path`` (a file or folder on
        this host, e.g. written by the learner under /dev/shm), stamped ``version``.

        The files are hard-linked (copied across filesystems) into this generator's own
        folder first, so ``path`` may be removed once this returns: respawned replicas load
        the kept copy.
        """
        await self.start()
        started = time.perf_counter()
        async with self._push_lock:
            kept = await asyncio.to_thread(self._keep, os.fspath(path), version)
            self._push_prepare_s = time.perf_counter() - started
            await self._push(_Latest(version=version, transport="shm", path=kept), in_flight)
        self._push_s = time.perf_counter() - started

    def _version_dir(self, version: int) -> str:
        assert self._weights_dir is not None
        target = os.path.join(self._weights_dir, f"v{version}-{time.monotonic_ns()}")
        os.makedirs(target)
        return target

    def _prepare(self, tensors: dict[str, "torch.Tensor"], version: int, transport: str) -> _Latest:
        """Lay the weights out for ``transport`` (in a worker thread)."""
        if transport == "rdma":
            # The buffer is registered on the event loop's thread (it needs Monarch's context).
            flat, layout = _flatten(tensors)
            return _Latest(version=version, transport="rdma", layout=layout, flat=flat)
        if transport == "shm":
            from safetensors.torch import save_file

            target = self._version_dir(version)
            save_file(tensors, os.path.join(target, _WEIGHTS_FILE))
            return _Latest(version=version, transport="shm", path=target)
        return _Latest(version=version, transport="message", tensors=tensors)

    def _keep(self, path: str, version: int) -> str:
        files = _safetensors_files(path, who="load_weights_from")
        target = self._version_dir(version)
        for file in files:
            try:
                os.link(file, os.path.join(target, file.name))
            except OSError:  # another filesystem: copy
                shutil.copyfile(file, os.path.join(target, file.name))
        return target

    async def _push(self, latest: _Latest, in_flight: InFlightPolicy | None) -> None:
        """Load ``latest`` on every healthy replica (under the push lock), then make it the
        one respawns load, and bring up any replica that came up meanwhile."""
        service = self.service
        if latest.transport == "rdma":
            answers = await service.broadcast_each(
                "load_weights_rdma", latest.buffer, latest.layout, latest.version, in_flight
            )
        elif latest.path is not None:
            answers = await service.broadcast_each("load_weights_from", latest.path, latest.version, in_flight)
        else:
            answers = await service.broadcast_each("update_weights", latest.tensors, latest.version, in_flight)
        for replica, info in answers:
            self._loaded[(replica.index, replica.generation)] = int(info["version"])
        previous, self._latest = self._latest, latest
        self._version = latest.version
        self._counters["updates"] += 1
        await self._release(previous)
        # A replica that finished respawning during the broadcast missed it.
        for replica in service.healthy_replicas():
            if self._loaded.get((replica.index, replica.generation)) != latest.version:
                await self._load_latest(replica)
                self._counters["catch_ups"] += 1

    async def _release(self, latest: _Latest | None) -> None:
        if latest is None:
            return
        if latest.buffer is not None:
            try:
                await latest.buffer.drop()
            except Exception as e:  # the buffer's owner may be gone already
                logger.debug("dropping an RDMA buffer: %s", e)
        if latest.path is not None and self._weights_dir and latest.path.startswith(self._weights_dir):
            shutil.rmtree(latest.path, ignore_errors=True)

    async def replica_health(self) -> list[dict[str, Any]]:
        """Each healthy replica's ``pid``, ``version`` and generator metrics."""
        result: list[dict[str, Any]] = await self.service.broadcast("health")
        return result

    @property
    def metrics(self) -> dict[str, float]:
        """``generator/requests``, ``generator/tokens``, ``generator/updates``,
        ``generator/version``, ``generator/push_s`` (the last push: copy + transport + every
        replica loaded), ``generator/push_prepare_s`` (its copy/write/registration part),
        ``generator/weight_transport`` (the last push's: 0 message, 1 shm, 2 rdma), ``generator/catch_ups``
        (replicas brought to the latest weights after a respawn), ``generator/start_s``,
        ``generator/replicas_healthy``, and the Service's ``service/<name>/...`` metrics."""
        out = {f"generator/{k}": v for k, v in self._counters.items()}
        out["generator/version"] = float(self._version)
        out["generator/push_s"] = self._push_s
        out["generator/push_prepare_s"] = self._push_prepare_s
        transport = self._latest.transport if self._latest is not None else self.weight_transport
        out["generator/weight_transport"] = _TRANSPORT_CODE.get(transport, -1.0)
        out["generator/start_s"] = self._start_s
        if self._service is not None:
            out["generator/replicas_healthy"] = float(len(self._service.healthy_replicas()))
            out.update(self._service.metrics)
        return out

    async def close(self) -> None:
        """Close every engine, stop the replicas' processes, remove pushed weights. Idempotent."""
        if self._closed:
            return
        self._closed = True
        service, self._service = self._service, None
        if service is not None:
            try:
                # Engines first (a vLLM engine core is a child process of its replica).
                await asyncio.wait_for(service.broadcast("close"), timeout=30)
            except Exception as e:
                logger.debug("closing the engines: %s", e)
            await service.stop()
        await self._release(self._latest)
        self._latest = None
        if self._scratch is not None:
            self._scratch.remove()
