"""Composition root: builds one node from a Config and runs it until told to stop.

Start order: identity (TLS material) -> data directory (locked) -> server (bound, so port
problems surface before anything else starts) -> capabilities -> serve -> join the mesh.
Stop order is the reverse, with health NOT_SERVING first so load balancers drain us.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import importlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from p2pagent import __version__
from p2pagent._proto import agent_pb2, agent_pb2_grpc, peer_pb2, peer_pb2_grpc
from p2pagent.api.agent import AgentService
from p2pagent.api.local_models import parse_serve
from p2pagent.api.models import fetch_chunks_handler
from p2pagent.api.peer import MULTIPLEXED_ID_FIELDS, PeerService, request_limits, request_scans
from p2pagent.config import Config, parse_address
from p2pagent.errors import ConfigError, P2PAgentError, ResourceExhausted
from p2pagent.identity import material as tls
from p2pagent.identity.spiffe import Identity, Role
from p2pagent.inference import isolation
from p2pagent.inference.cache import ModelCache
from p2pagent.inference.device import DeviceInfo, select_device
from p2pagent.inference.engine import InferenceEngine, resolve_config
from p2pagent.inference.formats import load_model
from p2pagent.inference.generation.placement import TAG as GENERATION_TAG
from p2pagent.inference.generation.placement import TAG_OFF as GENERATION_TAG_OFF
from p2pagent.inference.generation.relay_stats import RelayCounts
from p2pagent.inference.stats import ModelStats
from p2pagent.inference.worker import ModelWorker
from p2pagent.inference.worker_loader import isolating_loader, warming
from p2pagent.membership.driver import MembershipDriver, check_user_tags
from p2pagent.membership.view import PeerDirectory
from p2pagent.metrics.http import MetricsServer
from p2pagent.metrics.node import register_node_metrics
from p2pagent.models.publish_check import Confinement
from p2pagent.state.config import StateConfig
from p2pagent.state.driver import REVOKED_NS, StateDriver
from p2pagent.state.values import Change
from p2pagent.tasks.driver import TasksDriver
from p2pagent.transport.channels import ChannelPool
from p2pagent.transport.guard import Guard
from p2pagent.transport.metrics import RpcMetrics
from p2pagent.transport.ratelimit import PerIdentityLimiter
from p2pagent.transport.server import Server
from p2pagent.transport.streams import OpenStreams

if TYPE_CHECKING:  # torch and transformers load only on a node that serves decoders
    from p2pagent.inference.generation.config import GenerationConfig
    from p2pagent.inference.generation.placed import PlacedGeneration
    from p2pagent.inference.generation.service import GenerationService
    from p2pagent.models.driver import ModelsDriver
    from p2pagent.openai.server import OpenAIDoor

log = logging.getLogger(__name__)


class Component(Protocol):
    """A capability with background work (membership, state sync, task scheduling...).

    Components start in the order they were added, after the server is serving, and stop in
    the reverse order before it stops, so a later component may rely on an earlier one.
    """

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.name = config.name
        self.started_at = time.time()
        self._material = tls.load(config.tls_paths())
        if self._material.identity.role is not Role.NODE:
            raise ConfigError(
                f"certificate {config.tls_paths().cert} is a {self._material.identity.role.value}"
                " certificate; a daemon needs one issued with --role node"
            )
        if self._material.identity.name != config.name:
            raise ConfigError(
                f"certificate {config.tls_paths().cert} is for {self._material.identity.name!r}"
                f" but this node is named {config.name!r}"
            )
        self.identity = self._material.identity
        self.cluster = self._material.cluster
        self.data_dir = config.data_dir()
        self._lock: IO[str] | None = None
        self.metrics = RpcMetrics()
        self.revoked: dict[str, str] = {}  # identity URI -> reason; fed by replicated state
        limits = request_limits(config, state_config(config).max_message_bytes)
        self.guard = Guard(
            self.cluster,
            self.metrics,
            revoked=self.revoked.get,
            allow_rate=self._allow_rate(),
            request_limit=limits.get,
            request_scan=request_scans().get,
            multiplexed=MULTIPLEXED_ID_FIELDS.get,
            streams=OpenStreams(config.transport.max_streams_per_identity),
        )
        self.server = Server(self.guard, config.max_message_bytes, config.transport)
        self.channels = ChannelPool(lambda: self._material, config.max_message_bytes)
        self.address = ""
        self._stopped = asyncio.Event()
        self.device = select_device(config.device)  # imports torch only for CUDA
        self.local_models = [parse_serve(entry) for entry in config.serve]
        self.model_worker = model_worker(config, self.data_dir, self.device)
        self.models_cache = ModelCache(
            self.device.name,
            config.inference.cache_budget_bytes,
            loader=isolating_loader(self.model_worker) if self.model_worker else load_model,
        )
        self.engine = InferenceEngine(self.models_cache, config.inference, self.device)
        for m in self.local_models:
            self.models_cache.register(m.name, m.path, m.spec)
        self.components: list[Component] = []
        # Capabilities, in start order. Each owns a folder and a driver; see DESIGN.md.
        self.membership: MembershipDriver = MembershipDriver(
            self.name,
            config.membership,
            seeds=config.seeds,
            tags=self.member_tags(),
            data_dir=self.data_dir,
            channels=self.channels,
            metrics=self.metrics,
            address=lambda: self.address,
        )
        self.members: PeerDirectory = self.membership
        # A peer back at a new incarnation is redialled at once, not after the old channel's
        # reconnect backoff.
        self.membership.subscribe(self.channels.member_changed)
        self.components.append(self.membership)
        self.state: StateDriver = StateDriver(
            self.name,
            state_config(config),
            data_dir=self.data_dir,
            channels=self.channels,
            members=self.members,
            metrics=self.metrics,
            revoked=self.revoked,
        )
        self.components.append(self.state)
        # A revocation (made here or replicated from any node) ends the identity's open
        # streams; new calls are refused by the guard's check of ``revoked``.
        self.state.subscribe(REVOKED_NS, "", self._end_revoked_streams)
        from p2pagent.models.driver import ModelsDriver

        self.models: ModelsDriver = ModelsDriver(
            self.name,
            config.models,
            data_dir=self.data_dir,
            state=self.state,
            channels=self.channels,
            members=self.members,
            cache=self.models_cache,
            reserved_names=lambda: {m.name for m in self.local_models},
            check_confinement=publish_check_confinement(config, self.data_dir),
            warm=warming(self.model_worker) if self.model_worker else None,
        )
        self.components.append(self.models)
        self._generation: GenerationService | None = None
        self._placed: PlacedGeneration | None = None
        #: Where generations were placed (metrics); kept before torch loads.
        self.generation_relays = RelayCounts()
        if config.generation.folders:  # checked now: a bad folder stops the start
            self._generation = generation_service(config, self.device.name, self.models)
        self.tasks: TasksDriver = TasksDriver(
            self.name,
            config.tasks,
            capacity=config.inference.max_batch_size,
            engine=self.engine,
            models=self.models_cache.names,
            data_dir=self.data_dir,
            prepare=self.models.ensure_loadable,
            inline_bound=config.inference.max_queued,
            channels=self.channels,
            members=self.members,
            metrics=self.metrics,
            hints=self.membership,
        )
        self.components.append(self.tasks)
        register_node_metrics(self.metrics.registry, self)
        self.metrics_server: MetricsServer | None = None
        from p2pagent.training.driver import TrainingDriver

        self.training: TrainingDriver = TrainingDriver(
            self.name,
            config.training,
            channels=self.channels,
            members=self.members,
            set_tag=self.membership.set_tag,
        )
        self.components.append(self.training)
        # Last: started once everything it serves is up, stopped first.
        self.openai: OpenAIDoor | None = None
        if config.openai.listen:
            from p2pagent.openai.server import OpenAIDoor

            self.openai = OpenAIDoor(self, config.tls_paths, config.grace_period)
            self.components.append(self.openai)

    @property
    def generation(self) -> GenerationService:
        """Text generation, built on the first Generate of a node without local decoder
        folders (torch and transformers load only then)."""
        if self._generation is None:
            self._generation = generation_service(self.config, self.device.name, self.models)
        return self._generation

    @property
    def generation_started(self) -> GenerationService | None:
        return self._generation

    @property
    def generation_config(self) -> GenerationConfig:
        return self.config.generation

    @property
    def placed_generation(self) -> PlacedGeneration:
        """The one entry for a generation (gRPC Generate, the HTTP door): runs it here, or
        on a peer with room when this node has none (inference/generation/placement.py)."""
        if self._placed is None:
            from p2pagent.inference.generation.peers import GrpcGenerationPeers
            from p2pagent.inference.generation.placed import PlacedGeneration

            self._placed = PlacedGeneration(
                self.name,
                self.generation,
                GrpcGenerationPeers(self.name, self.members, self.channels),
                self.members.peers,
                counts=self.generation_relays,
            )
        return self._placed

    def member_tags(self) -> dict[str, str]:
        """Tags replicated with membership: user tags, then the ones the system owns."""
        check_user_tags(self.config.tags)
        tags = {
            **self.config.tags,
            "version": __version__,
            "accelerator": self.device.description,
        }
        if not self.config.generation.accept_relayed:  # peers leave it out of placement
            tags[GENERATION_TAG] = GENERATION_TAG_OFF
        return tags

    def _allow_rate(self) -> Callable[[Identity], bool] | None:
        if self.config.rate_limit <= 0:
            return None
        limiter = PerIdentityLimiter(self.config.rate_limit, burst=self.config.rate_limit * 2)

        def allow(ident: Identity) -> bool:
            if ident.role is Role.NODE:
                return True
            now = time.monotonic()
            if limiter.allow(ident.uri, now):
                return True
            raise ResourceExhausted(
                f"rate limit exceeded for {ident} ({self.config.rate_limit:g} requests/s, "
                "rate_limit); slow down and retry after the time this answer gives",
                retry_after_s=limiter.retry_after(ident.uri, now),
            )

        return allow

    def _end_revoked_streams(self, change: Change) -> None:
        if change.value.found:
            reason = change.value.values[0].decode(errors="replace") if change.value.values else ""
            ended = self.guard.revoke_streams(change.key, reason or "revoked")
            if ended:
                log.warning("ended %d open streams of revoked %s", ended, change.key)

    # ---- identity ----------------------------------------------------------------------------

    def material(self) -> tls.TLSMaterial:
        return self._material

    def reload_certificates(self) -> None:
        """Re-reads the certificate files (SIGHUP). New handshakes use the new material."""
        fresh = tls.load(self.config.tls_paths())
        if fresh.identity != self.identity:
            raise ConfigError(
                f"reloaded certificate names {fresh.identity}, not {self.identity}; refusing"
            )
        self._material = fresh
        if self.openai is not None:
            self.openai.reload_certificates()
        log.info("certificates reloaded; valid until %s", fresh.not_after.isoformat())

    # ---- lifecycle ---------------------------------------------------------------------------

    def _lock_data_dir(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            lock = (self.data_dir / "LOCK").open("w")
        except OSError as e:
            raise ConfigError(f"cannot use data directory {self.data_dir}: {e.strerror}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise ConfigError(
                f"data directory {self.data_dir} is in use by another p2pagentd"
            ) from None
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock = lock

    async def start(self) -> None:
        self._lock_data_dir()
        agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentService(self), self.server.grpc)
        # Before PeerService: it answers FetchChunks in that service's place.
        self.server.grpc.add_generic_rpc_handlers([fetch_chunks_handler(self)])
        peer_pb2_grpc.add_PeerServiceServicer_to_server(PeerService(self), self.server.grpc)
        self.server.add_service(agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name)
        self.server.add_service(peer_pb2.DESCRIPTOR.services_by_name["PeerService"].full_name)
        port = self.server.bind(self.config.listen, self.material)
        host, listen_port = parse_address(self.config.advertised(), "advertise address")
        if listen_port == 0 and not self.config.advertise:
            listen_port = port
        self.address = f"[{host}]:{listen_port}" if ":" in host else f"{host}:{listen_port}"
        if self.config.metrics:
            mhost, mport = parse_address(self.config.metrics, "metrics address")
            server = MetricsServer(self.metrics.registry, asyncio.get_running_loop())
            try:
                server.start(mhost, mport)
                self.metrics_server = server
            except OSError as e:
                raise ConfigError(f"cannot serve metrics on {self.config.metrics}: {e}") from None
        if self.local_models:
            # A node that serves models loads torch now, before it joins: imported later,
            # the first batch would hold the GIL for a second or two and stall this loop's
            # probes and RPCs. A node serving none (state only) never pays for torch unless
            # asked to run a model.
            await asyncio.get_running_loop().run_in_executor(None, importlib.import_module, "torch")
        await self.server.start()
        log.info("%s serving on %s as %s", self.name, self.address, self.identity)
        log_worker_plan(self.model_worker)
        for component in self.components:
            await component.start()
        # Only now ready: state, task journal and model store are loaded.
        await self.server.set_serving(True)

    async def stop(self) -> None:
        """Graceful stop: health NOT_SERVING, in-flight calls get the grace period, then exit."""
        log.info("stopping (grace %.1fs)", self.config.grace_period)
        for component in reversed(self.components):
            try:
                await component.stop()
            except Exception:
                log.exception("stopping %s failed", type(component).__name__)
        await self.server.stop(self.config.grace_period)
        if self.model_worker is not None:
            # Before the engine: a batch stuck in the worker fails now instead of holding
            # the engine's drain for inference.worker_timeout_s.
            await self.model_worker.aclose()
        if self._generation is not None:
            await self._generation.close()
        await self.engine.close()
        self.models_cache.close()
        await self.channels.close()
        if self.metrics_server is not None:
            # Last, so a scrape during the drain still sees the node; off the loop, since
            # stopping waits for the server thread's poll.
            await asyncio.to_thread(self.metrics_server.stop)
            self.metrics_server = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # ---- views used by the API --------------------------------------------------------------

    def status(self) -> agent_pb2.StatusResponse:
        alive, total = self.membership.counts()
        replica = self.state.loaded
        tasks = self.tasks
        return agent_pb2.StatusResponse(
            name=self.name,
            identity=self.identity.uri,
            address=self.address,
            version=__version__,
            device=self.device.description,
            uptime_s=time.time() - self.started_at,
            members_alive=alive,
            members_total=total,
            incarnation=self.membership.incarnation,
            placement=self.config.tasks.placement,
            queue_length=tasks.queue.n_queued,
            running=tasks.running,
            completed=tasks.core.stats.completed,
            stolen_in=tasks.core.stats.stolen_in,
            stolen_out=tasks.core.stats.stolen_out,
            steal_requests=tasks.core.steal.attempts,
            backlog_s=tasks.backlog_s() + self.engine.estimated_backlog_s(),
            models=self.models_cache.names(),
            state_keys=replica.key_count if replica else 0,
            state_digest=replica.state_digest() if replica else "",
            batching=[batching_proto(s) for s in self.engine.stats().values() if s.batches],
        )


def batching_proto(s: ModelStats) -> agent_pb2.ModelBatching:
    """How a model's batches formed here (``inference.stats``), for Status and top."""
    return agent_pb2.ModelBatching(
        model=s.model, batches=s.batches, rows=s.rows, tokens=s.tokens,
        padded_tokens=s.padded_tokens, padding_ratio=s.padding_ratio,
        mean_queue_s=s.mean_queue_s, mean_batch_rows=s.mean_batch_size,
    )  # fmt: skip


def protected_paths(config: Config, data_dir: Path) -> list[Path]:
    """What model code must never read: the node's key, certificates and data folder."""
    paths = config.tls_paths()
    return sorted({paths.key, paths.cert, paths.ca, paths.key.parent, data_dir})


def publish_check_confinement(config: Config, data_dir: Path) -> Confinement | None:
    """The publish check runs an upload's code fenced like the model worker (None where
    ``models.confine_check`` or ``inference.isolate_code_models`` is off)."""
    inference = config.inference
    if not (inference.isolate_code_models and config.models.confine_check):
        return None
    return Confinement(inference.worker_uid, tuple(protected_paths(config, data_dir)))


def generation_service(config: Config, device: str, models: ModelsDriver) -> GenerationService:
    """The decoder folders of ``generation.folders``, each checked now (a bad one stops the
    start with a message naming it), and the decoder models published through the mesh."""
    folders = config.generation.folder_paths()
    from p2pagent.inference.generation.folder import check_decoder_folder
    from p2pagent.inference.generation.published import PublishedDecoders
    from p2pagent.inference.generation.service import GenerationService

    for name, path in folders.items():
        try:
            check_decoder_folder(path)
        except P2PAgentError as e:
            raise ConfigError(f"generation.folders {name}={path}: {e}") from None
    return GenerationService(folders, config.generation, device, PublishedDecoders(models))


def model_worker(config: Config, data_dir: Path, device: DeviceInfo) -> ModelWorker | None:
    """The worker that runs code-bearing models away from the node's key (started on the
    first such model); None where ``inference.isolate_code_models`` is off."""
    inference = config.inference
    if not inference.isolate_code_models:
        return None
    protected = protected_paths(config, data_dir)
    resolved = resolve_config(inference, device)
    worker = ModelWorker.create(
        inference.worker_uid, protected, resolved.intra_op_threads, inference.worker_timeout_s,
        max(0, resolved.worker_memory_bytes),
    )  # fmt: skip
    return worker


def log_worker_plan(worker: ModelWorker | None) -> None:
    """Says how model code is confined; once serving, so that a start that fails (a port in
    use) still prints only its one-line error."""
    if worker is None:
        log.warning(
            "inference.isolate_code_models is off: TorchScript and torch.export models run "
            "inside the daemon, where they can read the node's private key"
        )
        return
    if isolation.protects_key(worker.plan):
        log.info("%s", isolation.describe(worker.plan))
    else:
        log.warning("%s: model code could read the node's key", isolation.describe(worker.plan))


def state_config(config: Config) -> StateConfig:
    """The state settings, with sync messages kept under the transport's message limit."""
    state = config.state
    room = config.max_message_bytes - 64 * 1024  # envelope and gRPC framing
    if state.max_message_bytes > room:
        state = dataclasses.replace(state, max_message_bytes=room)
    return state


def data_path(node: Node, *parts: str) -> Path:
    return node.data_dir.joinpath(*parts)
