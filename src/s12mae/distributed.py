"""Running data preparation on a Dask cluster (``--cluster local:N | tcp://HOST:PORT``).

The one home of how ``s12mae shards`` and ``s12mae stats`` reach Dask (``dask.distributed``, the
``[dask]`` extra): :func:`open_client` turns a cluster spec into a client (a ``LocalCluster`` that
it owns and closes, or a connection to a running scheduler: one you started with
``dask scheduler``/``dask worker``, or a SLURM/PBS cluster of ``dask-jobqueue``);
:class:`TaskBar` is their live progress line (tqdm) and :func:`worker_cached` opens a dataset once
per worker process.

A worker that dies mid-task is survived by Dask itself: the scheduler reruns the task on another
worker (up to ``distributed.scheduler.allowed-failures`` times) and recomputes results lost with
it. The tasks run there must therefore be idempotent: the shard writer's are (pure reads;
temporary name, then rename, same bytes).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["TaskBar", "open_client", "parse_cluster", "worker_cached"]

_OPENED: dict[str, Any] = {}
_OPENED_LOCK = threading.Lock()
_LOCAL = re.compile(r"^local:(\d+)$")
_ADDRESS = re.compile(r"^(tcp|tls|ucx|inproc)://\S+$")


def parse_cluster(spec: str) -> tuple[str, int | str]:
    """``("local", N)`` for ``local:N``, ``("address", spec)`` for ``tcp://HOST:PORT`` (or tls/ucx).

    Raises:
        ValueError: any other spec; the message lists the accepted forms.
    """
    m = _LOCAL.match(spec.strip())
    if m and int(m.group(1)) >= 1:
        return "local", int(m.group(1))
    if _ADDRESS.match(spec.strip()):
        return "address", spec.strip()
    raise ValueError(f"--cluster {spec!r}: give local:N (N >= 1 worker processes on this machine) or the "
                     "address of a running Dask scheduler, tcp://HOST:PORT")


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise ValueError("--cluster needs Dask: pip install 's12mae[dask]' (dask.distributed)") from None
    return distributed


@contextlib.contextmanager
def open_client(spec: str, *, threads_per_worker: int = 1, timeout_s: float = 30.0) -> Iterator[Any]:
    """A ``distributed.Client`` for the cluster ``spec`` (see :func:`parse_cluster`), closed on exit.

    ``local:N`` starts N worker processes of ``threads_per_worker`` threads (one thread each by
    default: chipping holds the GIL in numpy and tar code) and shuts them down afterwards; an
    address connects to a running scheduler and leaves it running.

    The local workers run without Dask's default ``MALLOC_TRIM_THRESHOLD_=65536`` (ours): with it,
    glibc hands every freed scene-sized array back to the system and page-faults the next one in,
    which took about twice the system CPU time of one process when chipping (benchmarks/RESULTS.md);
    memory stays bounded by the writer's window. A variable of that name in the environment still
    wins. Workers you start yourself (``dask worker``) take the environment you give them.

    Raises:
        ValueError: Dask is not installed, or the scheduler cannot be reached within ``timeout_s``.
    """
    distributed = _import_distributed()
    kind, value = parse_cluster(spec)
    with contextlib.ExitStack() as stack:
        if kind == "local":
            import dask

            with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
                cluster = stack.enter_context(distributed.LocalCluster(
                    n_workers=int(value), threads_per_worker=threads_per_worker, processes=True,
                    dashboard_address=":0"))
            client = stack.enter_context(distributed.Client(cluster))
        else:
            try:
                client = stack.enter_context(distributed.Client(str(value), timeout=timeout_s))
            except (OSError, TimeoutError) as err:
                raise ValueError(f"--cluster {value}: cannot reach a Dask scheduler there ({err})") from None
        yield client


class TaskBar:
    """The live progress line of a distributed run: tqdm over ``total`` units (scenes or chips), with
    rate and ETA, plus free-form counters after it (``scenes 12/40``)."""

    def __init__(self, total: int, unit: str, desc: str, enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit=unit, desc=desc, disable=not enabled, dynamic_ncols=True)

    def update(self, n: int, **postfix: Any) -> None:
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def worker_cached(source: Any, token: str) -> Any:
    """``source()`` once per worker process and ``token`` (e.g. a dataset listing), or ``source``
    itself when it is not callable (data sent along with the task or scattered)."""
    if not callable(source):
        return source
    with _OPENED_LOCK:
        if token not in _OPENED:
            if len(_OPENED) >= 4:  # a long-lived worker serving many runs keeps a few
                _OPENED.pop(next(iter(_OPENED)))
            _OPENED[token] = source()
        return _OPENED[token]
