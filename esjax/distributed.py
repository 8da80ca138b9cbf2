"""Populations sharded across devices and hosts: a 1-D mesh, ``shard_map``, ``jax.distributed``.

One argument turns a run into a sharded one::

    mesh = esjax.distributed.make_mesh()            # every device of every process
    state, metrics = esjax.run(es, fitness_fn, key, state, 1000, mesh=mesh)

The population axis is split over the mesh's single axis (``"population"``); the strategy state
is replicated. Each device evaluates its own slice of the population and only the fitness values
(``population_size`` scalars) are all-gathered. Results do not depend on the device count: an
8-device run reproduces the 1-device run to float32 rounding.

**Declared decompositions: only fitness moves.** A strategy that declares a
:class:`~esjax.base.Decomposition` (OpenAI-ES, sep-CMA-ES) generates member ``i`` from
``(key, i)`` alone, so each device samples exactly its own members — the shared-seed idea of
Salimans et al. (2017, arXiv:1703.03864) without a noise table. After the all-gather of the
fitness (and any declared per-member scalars) every device computes the same weights, sums its
own members' statistics, and one ``psum`` of that sum replaces any gather of the population; the
best member is rebuilt from ``(key, i)``. Nothing here knows which strategy it runs.

**Other strategies** (CMA-ES, PSO, SA, ...) take the generic path: the whole generation runs
inside ``shard_map`` with the state replicated, so every device runs ``ask`` and ``tell`` exactly
as written (the same numbers as one device; left to XLA's partitioner they would be split with
re-associated sums, and for CMA-ES one ulp in ``C`` can flip an eigenvector's sign and change
the run), evaluates only its own rows, and all-gathers the fitness. Nothing here depends on a
strategy's internals, so a new strategy is sharded without changes. The price is that sampling
and the update are computed on every device: sharding pays when evaluation dominates (a
network's forward pass over a batch, a simulation), not for a cheap test function.

**Padding.** A population that does not divide by the device count is padded to the next
multiple with copies of a real member (so ``fitness_fn`` never sees made-up inputs); the padded
members' fitness is dropped before the strategy sees it, so padding never affects the update.

**Why shard_map, not pmap.** ``jax.pmap`` is JAX's older SPMD API; its documentation now calls it
"the old way" and it is itself implemented with ``jit`` and ``shard_map``. ``pmap`` maps over a
leading axis whose size is the local device count, so the population would be reshaped by hand
to ``(devices, members per device, ...)`` and its outputs live per device. ``jax.shard_map``
composes with ``jit`` and ``lax.scan`` (a whole chunk of generations is one compiled program over
ordinary global arrays), works on any ``Mesh`` including one spanning several processes, which
is how multi-host runs work without extra code, and makes communication explicit
(``all_gather``, ``psum``): the tests can assert from the compiled HLO that no population-sized
array crosses devices. The mesh is built with ``AxisType.Auto`` because ``jax.make_mesh`` now
defaults to ``Explicit`` axes, under which sorting or contracting over a sharded population axis
outside ``shard_map`` raises.

**Multi-host.** The same code runs on many processes after :func:`initialize` (a thin wrapper of
``jax.distributed.initialize``); ``make_mesh()`` then spans every process's devices and the
replicated state is identical everywhere. Every process must run the same program.

- Local test: ``esjax launch -n 2 -- python train.py`` (or :func:`launch`) starts N processes on
  127.0.0.1 with ``ESJAX_COORDINATOR_ADDRESS``, ``ESJAX_NUM_PROCESSES`` and ``ESJAX_PROCESS_ID``
  set; :func:`initialize` reads them and binds the coordinator to loopback. On CPU the
  processes exchange data through gloo (``jax_cpu_collectives_implementation``, the default).
- SLURM: ``srun --ntasks=N --gpus-per-task=G python train.py`` with ``initialize()`` called
  without arguments at the top of ``train.py``: JAX reads the SLURM variables (node list, task
  id) and picks process 0's node as coordinator.
- Cloud TPU pod: run the same script on every worker (``gcloud compute tpus tpu-vm ssh NAME
  --worker=all --command="python train.py"``); ``initialize()`` without arguments discovers
  the pod.
- Anything else: pass ``coordinator_address="host0:PORT"``, ``num_processes`` and ``process_id``
  explicitly (or set the three ``ESJAX_*`` variables) on every process.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from esjax import shaping
from esjax.base import (
    Strategy,
    StrategyState,
    check_fitness,
    check_int,
    mask_non_finite,
    member_scalars,
    member_weights,
    record,
)
from esjax.loop import (
    FitnessFn,
    Generation,
    evaluate_population,
    generation_metrics,
    halting,
    make_generation,
)

AXIS_NAME = "population"
ENV_COORDINATOR_ADDRESS = "ESJAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "ESJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "ESJAX_PROCESS_ID"


def make_mesh(
    devices: int | Sequence[jax.Device] | None = None, axis_name: str = AXIS_NAME
) -> Mesh:
    """A 1-D mesh with an ``Auto`` axis ``axis_name`` over which populations are sharded.

    Args:
      devices: ``None`` for every device of every process (``jax.devices()``), an int ``k`` for
        the first ``k`` of them, or an explicit sequence of devices.
      axis_name: the mesh axis name.
    """
    if devices is None:
        devices = jax.devices()
    elif isinstance(devices, int):
        available = jax.devices()
        if not 1 <= devices <= len(available):
            raise ValueError(f"devices must lie in [1, {len(available)}], got {devices}")
        devices = available[:devices]
    devices = list(devices)
    if not devices:
        raise ValueError("devices must name at least one device")
    return jax.make_mesh(
        (len(devices),), (axis_name,), axis_types=(AxisType.Auto,), devices=devices
    )


def mesh_axis(mesh: Mesh) -> str:
    """The name of ``mesh``'s single axis; ValueError unless the mesh is 1-D with an Auto axis."""
    if len(mesh.axis_names) != 1:
        raise ValueError(f"mesh must be 1-D, got axes {mesh.axis_names}; use make_mesh()")
    if mesh.axis_types[0] != AxisType.Auto:
        raise ValueError(
            f"mesh axis must be AxisType.Auto, got {mesh.axis_types[0]}; use make_mesh()"
        )
    return mesh.axis_names[0]


def padded_size(population_size: int, num_devices: int) -> int:
    """``population_size`` rounded up to a multiple of ``num_devices``."""
    return -(-population_size // num_devices) * num_devices


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every array leaf of ``tree`` on every device of ``mesh`` (works across processes).

    Leaves already replicated on ``mesh`` are returned as they are. On several processes the
    host values must be identical everywhere (JAX checks).
    """
    sharding = NamedSharding(mesh, P())

    def put(leaf):
        if not isinstance(leaf, jax.Array | np.ndarray | np.generic):
            return leaf
        if isinstance(leaf, jax.Array) and leaf.sharding.is_equivalent_to(sharding, leaf.ndim):
            return leaf
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = put(jax.random.key_data(leaf))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        # Through host memory: a committed single-device array cannot be put on devices of
        # other processes directly.
        return jax.device_put(np.asarray(leaf), sharding)

    return jax.tree_util.tree_map(put, tree)


def _own_rows_evaluator(axis: str, num_devices: int) -> Callable[..., jax.Array]:
    """Inside ``shard_map``: evaluate this device's rows of a replicated population.

    Same signature as :func:`esjax.loop.evaluate_population`; every device returns the full
    ``(population_size,)`` fitness (all-gathered).
    """

    def evaluate(
        fitness_fn: FitnessFn,
        population: jax.Array,
        spec,
        *,
        key: jax.Array | None = None,
        batch_size: int | None = None,
    ):
        population_size = population.shape[0]
        per_device = padded_size(population_size, num_devices) // num_devices
        indices = jax.lax.axis_index(axis) * per_device + jnp.arange(per_device)
        # Padding rows repeat the last member, so fitness_fn only sees points the strategy
        # proposed; their fitness is cut off below.
        rows = population[jnp.minimum(indices, population_size - 1)]
        fitness = evaluate_population(fitness_fn, rows, spec, key=key, batch_size=batch_size)
        return jax.tree_util.tree_map(
            lambda leaf: jax.lax.all_gather(leaf, axis, tiled=True, to="invarying")[
                :population_size
            ],
            fitness,
        )

    return evaluate


def shard_evaluate(mesh: Mesh) -> Callable[..., jax.Array]:
    """An evaluator with :func:`esjax.loop.evaluate_population`'s signature, sharded on ``mesh``.

    The population is taken as replicated; each device evaluates its
    ``⌈population_size / devices⌉`` rows (``batch_size`` at a time if given) and the fitness is
    all-gathered. For custom loops; :func:`make_sharded_generation` is the whole generation.
    """
    axis = mesh_axis(mesh)
    own_rows = _own_rows_evaluator(axis, mesh.size)

    def evaluate(
        fitness_fn: FitnessFn,
        population: jax.Array,
        spec,
        *,
        key: jax.Array | None = None,
        batch_size: int | None = None,
    ):
        def local(population, key):
            return own_rows(fitness_fn, population, spec, key=key, batch_size=batch_size)

        return jax.shard_map(local, mesh=mesh, in_specs=(P(), P()), out_specs=P())(population, key)

    return evaluate


def _decomposed_generation(
    es: Strategy,
    fitness_fn: FitnessFn,
    mesh: Mesh,
    batch_size: int | None,
    fitness_takes_key: bool,
) -> Generation:
    """A generation of a strategy that declares a :class:`~esjax.base.Decomposition`: each
    device samples, evaluates and sums over its own members; the population never moves."""
    decomposition = es.capabilities.decomposition
    axis = mesh_axis(mesh)
    population_size = es.population_size
    per_device = padded_size(population_size, mesh.size) // mesh.size
    padding = per_device * mesh.size - population_size

    def local(ask_key, eval_key, state):
        indices = jax.lax.axis_index(axis) * per_device + jnp.arange(per_device)
        # Padding rows (indices >= n) regenerate the last member; their weight is zero below.
        members = decomposition.sample(ask_key, state, jnp.minimum(indices, population_size - 1))
        fitness = evaluate_population(
            fitness_fn, members, state.spec, key=eval_key, batch_size=batch_size
        )
        fitness = check_fitness(fitness, per_device)
        members, fitness, rows_finite = mask_non_finite(
            state, members, fitness, decomposition.needs_finite_rows
        )
        scalars = member_scalars(decomposition, state, members, rows_finite)
        if scalars is None:
            scalars = jnp.zeros(per_device, members.dtype)
        gathered = jax.lax.all_gather(
            (fitness, scalars, rows_finite), axis, tiled=True, to="invarying"
        )
        fitness, scalars, all_rows_finite = (values[:population_size] for values in gathered)
        if decomposition.scalars is None:
            scalars = None
        weights = member_weights(decomposition, state, fitness, scalars, all_rows_finite)
        local_weights = jnp.concatenate([weights, jnp.zeros(padding, weights.dtype)])[indices]
        # The only reduction over members: one sum of per-member statistics across devices.
        totals = jax.lax.psum(decomposition.statistics(state, members, local_weights), axis)
        told = decomposition.apply(state, totals, fitness)
        # The best member is rebuilt from (key, i), not gathered.
        best = jnp.argmin(shaping.sanitize(fitness))
        best_member = decomposition.sample(ask_key, state, best[None])
        best_member = jnp.where(all_rows_finite[best], best_member, state.best_solution)
        evaluations = es.capabilities.evaluations_per_generation
        return record(state, told, best_member, fitness[best][None], evaluations), fitness

    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P()), out_specs=(P(), P()))

    def generation(key: jax.Array, state: StrategyState) -> tuple[StrategyState, dict]:
        ask_key, eval_key = jax.random.split(key)  # the split make_generation uses
        state, fitness = sharded(ask_key, eval_key if fitness_takes_key else None, state)
        return state, generation_metrics(es, state, fitness)

    return halting(es, generation)


def make_sharded_generation(
    es: Strategy,
    fitness_fn: FitnessFn,
    mesh: Mesh,
    *,
    batch_size: int | None = None,
    fitness_takes_key: bool = False,
    reduce_locally: bool = True,
) -> Generation:
    """The un-jitted sharded generation ``(key, state) -> (state, metrics)``.

    Same key use and results as :func:`esjax.loop.make_generation`; ``state`` must be replicated
    on ``mesh`` (:func:`replicate`). A strategy that declares a
    :class:`~esjax.base.Decomposition` (when ``reduce_locally``) keeps its population on the
    devices that sampled it and reduces one sum; any other strategy runs ``ask`` and ``tell``
    replicated with sharded evaluation. ``esjax.step``, ``esjax.evolve`` and ``esjax.run`` with
    ``mesh=`` are the public doors to this.
    """
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, 1)
    if reduce_locally and es.capabilities.decomposition is not None:
        return _decomposed_generation(es, fitness_fn, mesh, batch_size, fitness_takes_key)
    axis = mesh_axis(mesh)
    generation = make_generation(
        es,
        fitness_fn,
        batch_size=batch_size,
        fitness_takes_key=fitness_takes_key,
        evaluate=_own_rows_evaluator(axis, mesh.size),
    )
    # The whole generation inside shard_map, so ask and tell run as written on every device.
    # Left to the SPMD partitioner, they get split across devices with re-associated sums; for
    # CMA-ES that 1-ulp change in C can flip an eigenvector's sign and send the run elsewhere.
    return jax.shard_map(generation, mesh=mesh, in_specs=(P(), P()), out_specs=(P(), P()))


def sharded_step(
    es: Strategy,
    fitness_fn: FitnessFn,
    mesh: Mesh,
    *,
    batch_size: int | None = None,
    fitness_takes_key: bool = False,
    jit: bool = True,
) -> Generation:
    """Deprecated (0.2.0): ``esjax.step(es, fitness_fn, mesh=mesh)`` is the same function."""
    warnings.warn(
        "esjax.distributed.sharded_step is deprecated and goes in 0.3; use "
        "esjax.step(es, fitness_fn, mesh=mesh)",
        DeprecationWarning,
        stacklevel=2,
    )
    generation = make_sharded_generation(
        es, fitness_fn, mesh, batch_size=batch_size, fitness_takes_key=fitness_takes_key
    )
    compiled = jax.jit(generation) if jit else generation

    def step(key: jax.Array, state: StrategyState) -> tuple[StrategyState, dict]:
        return compiled(replicate(key, mesh), replicate(state, mesh))

    return step


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    cpu_devices: int | None = None,
    timeout_s: int = 300,
) -> tuple[int, int]:
    """Join a multi-process run (``jax.distributed.initialize``); call before any other JAX call.

    Arguments left ``None`` are read from ``ESJAX_COORDINATOR_ADDRESS``, ``ESJAX_NUM_PROCESSES``
    and ``ESJAX_PROCESS_ID`` (set by :func:`launch`); when none of those is set either, JAX
    detects the cluster itself (SLURM, Open MPI, Cloud TPU). A loopback coordinator address is
    also the address the coordinator binds to, so a local test never listens on the network.

    Args:
      coordinator_address: ``"host:port"`` of process 0.
      num_processes: this run's process count.
      process_id: this process's rank.
      cpu_devices: number of CPU devices this process exposes (``jax_num_cpu_devices``), to
        simulate several devices per host on CPU.
      timeout_s: bound on connecting to the coordinator, on detecting a dead peer, and on the
        wait at shutdown, so a failed peer cannot hang the others.

    Returns:
      ``(process_id, num_processes)`` as JAX sees them.
    """
    environ = os.environ
    if coordinator_address is None:
        coordinator_address = environ.get(ENV_COORDINATOR_ADDRESS)
    if num_processes is None and ENV_NUM_PROCESSES in environ:
        num_processes = int(environ[ENV_NUM_PROCESSES])
    if process_id is None and ENV_PROCESS_ID in environ:
        process_id = int(environ[ENV_PROCESS_ID])
    if cpu_devices is not None:
        jax.config.update("jax_num_cpu_devices", cpu_devices)
    bind_address = None
    if coordinator_address is not None and _is_loopback(coordinator_address.rpartition(":")[0]):
        bind_address = coordinator_address
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        coordinator_bind_address=bind_address,
        initialization_timeout=timeout_s,
        heartbeat_timeout_seconds=timeout_s,
        shutdown_timeout_seconds=timeout_s,
    )
    return jax.process_index(), jax.process_count()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class LaunchedProcess(NamedTuple):
    """Exit code and captured output (``None`` when not captured) of one launched process.

    ``killed`` is True when the launcher stopped the process (a peer failed or the run timed
    out): its ``returncode`` (``-9``) is then the launcher's doing, not the process's own.
    ``finish_order`` ranks the processes by when they were seen to exit on their own (0 first;
    killed processes come last).
    """

    returncode: int
    stdout: str | None
    stderr: str | None
    killed: bool = False
    finish_order: int = 0


def exit_code(results: Sequence[LaunchedProcess]) -> int:
    """The exit code of a launched run: the first failing process's own code, else 0.

    A process the launcher killed after a peer failed reports ``-9``; that code says nothing
    about the run, so it is used only when no process failed on its own (a timeout).
    """
    failed = sorted(
        (result for result in results if result.returncode != 0),
        key=lambda result: (result.killed, result.finish_order),
    )
    return abs(failed[0].returncode) if failed else 0


def launch(
    command: Sequence[str],
    num_processes: int,
    *,
    port: int | None = None,
    timeout_s: float | None = None,
    capture_output: bool = False,
    env: dict[str, str] | None = None,
) -> list[LaunchedProcess]:
    """Run ``command`` as ``num_processes`` processes of one run, coordinated over 127.0.0.1.

    Each process gets ``ESJAX_COORDINATOR_ADDRESS=127.0.0.1:port``, ``ESJAX_NUM_PROCESSES`` and
    its ``ESJAX_PROCESS_ID``; the command calls :func:`initialize` to join. If one process fails
    the others are stopped, and all are killed after ``timeout_s`` (``TimeoutError``), so a
    broken run never hangs.

    Returns:
      One :class:`LaunchedProcess` per process, in rank order.
    """
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if not command:
        raise ValueError("command must not be empty")
    address = f"127.0.0.1:{port or free_port()}"
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    timed_out = False
    outputs = []
    processes = []
    finished: list[int] = []  # ranks in the order they were seen to exit on their own
    killed: set[int] = set()
    try:
        for rank in range(num_processes):
            rank_env = {
                **os.environ,
                **(env or {}),
                ENV_COORDINATOR_ADDRESS: address,
                ENV_NUM_PROCESSES: str(num_processes),
                ENV_PROCESS_ID: str(rank),
            }
            # Temporary files rather than pipes: a full pipe would block a chatty process.
            streams = (
                (tempfile.TemporaryFile(), tempfile.TemporaryFile()) if capture_output else None
            )
            outputs.append(streams)
            processes.append(
                subprocess.Popen(
                    list(command),
                    env=rank_env,
                    stdout=streams[0] if streams else None,
                    stderr=streams[1] if streams else None,
                )
            )
        while True:
            for rank, process in enumerate(processes):
                if rank not in finished and process.poll() is not None:
                    finished.append(rank)
            if len(finished) == len(processes):
                break
            if any(processes[rank].returncode != 0 for rank in finished):
                break  # a peer failed: the rest would wait for it until their own timeouts
            if deadline is not None and time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.05)
    finally:
        for rank, process in enumerate(processes):
            if process.poll() is None:
                process.kill()
                killed.add(rank)
            elif rank not in finished:
                finished.append(rank)  # exited on its own between the last poll and now
            process.wait()
    order = {rank: position for position, rank in enumerate(finished)}
    results = [
        LaunchedProcess(
            process.returncode,
            *_read_streams(streams),
            killed=rank in killed,
            finish_order=order.get(rank, len(processes)),
        )
        for rank, (process, streams) in enumerate(zip(processes, outputs, strict=True))
    ]
    if timed_out:
        tails = "".join(
            f"\n--- process {rank} stderr (tail) ---\n{result.stderr[-2000:]}"
            for rank, result in enumerate(results)
            if result.stderr is not None
        )
        raise TimeoutError(f"{list(command)} still running after {timeout_s} s; killed{tails}")
    return results


def _read_streams(streams) -> tuple[str | None, str | None]:
    if streams is None:
        return None, None
    texts = []
    for stream in streams:
        stream.seek(0)
        texts.append(stream.read().decode(errors="replace"))
        stream.close()
    return texts[0], texts[1]


__all__ = [
    "AXIS_NAME",
    "ENV_COORDINATOR_ADDRESS",
    "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID",
    "LaunchedProcess",
    "exit_code",
    "free_port",
    "initialize",
    "launch",
    "make_mesh",
    "make_sharded_generation",
    "mesh_axis",
    "padded_size",
    "replicate",
    "shard_evaluate",
    "sharded_step",
]
