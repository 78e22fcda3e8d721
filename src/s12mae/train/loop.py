"""The one pretraining loop; it does not know which method it trains.

It owns the step: the schedule picks the task, the task's loader gives this rank's
micro-batches, the method gives loss sums and their element counts, and the loop does the rest
(normalisation by global counts, backward, gradient accumulation, data parallelism, clipping,
optimizer step, logging, pictures and checkpoints).

Data parallelism: launched by ``torchrun`` (``WORLD_SIZE`` > 1) each rank computes gradients of
its share of the global batch and the gradients are summed with one bucketed all-reduce after
the last micro-batch of the step. Because the loss is normalised by the *global* element count,
the sum is exactly the gradient of the global-batch loss. All-reducing once per step rather
than hooking DDP's overlapped reducer costs the overlap of communication with backward, and
buys two things: accumulation needs no ``no_sync``, and under AGD the idle task's parameters
keep ``grad = None`` on every rank (the schedule is the same on all ranks, so every rank reduces
the same set of tensors) without ``find_unused_parameters``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import default_collate
from tqdm import tqdm

from s12mae.config import PretrainConfig, ProbeConfig, upgrade_saved_config
from s12mae.data import (
    ArrayDataset,
    available_rows,
    load_arrays,
    model_batch,
    sensor_specs,
    task_loader,
    to_device,
)
from s12mae.files import atomic_write
from s12mae.methods import build_method
from s12mae.paths import is_url
from s12mae.runtime import autocast_context, resolve_device, set_lr
from s12mae.sensors import SensorSpec
from s12mae.shards import is_shard_set
from s12mae.train import parallel
from s12mae.train.checkpoint import (
    is_sharded,
    latest_checkpoint,
    load_checkpoint,
    load_sharded_checkpoint,
    save_checkpoint,
    save_sharded_checkpoint,
)
from s12mae.train.checks import EmptyTargets
from s12mae.train.datastats import simulated_arrays, with_data_statistics
from s12mae.train.heldout import held_out_losses, split_held_out
from s12mae.train.loggers import Sinks, open_sinks
from s12mae.train.mirror import RunMirror
from s12mae.train.optim import build_optimizer, lr_at
from s12mae.train.probe import FrozenProbe, plot_probe_curve
from s12mae.train.ranks import RankErrors
from s12mae.train.rundir import RunFolder, step_seed
from s12mae.train.schedule import TaskSchedule

__all__ = ["RunResult", "pretrain"]

Callback = Callable[[int, dict[str, Any]], None]


@dataclass
class RunResult:
    """What a finished run left behind."""

    run_dir: Path
    history: list[dict[str, Any]]
    model: nn.Module


@dataclass
class _Dist:
    rank: int
    world: int
    device: torch.device


def _setup(cfg: PretrainConfig) -> _Dist:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return _Dist(0, 1, resolve_device(cfg.train.device))
    device = resolve_device(cfg.train.device, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), device)


def _all_reduce(t: torch.Tensor, d: _Dist) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(t)
    return t


def _all_reduce_grads(params: Sequence[nn.Parameter], d: _Dist, bucket_bytes: int = 64 << 20) -> None:
    """Sum gradients over ranks in flat buckets (parameters whose grad is None are skipped)."""
    if d.world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    bucket: list[torch.Tensor] = []
    size = 0
    for i, g in enumerate(grads):
        bucket.append(g)
        size += g.numel() * g.element_size()
        if size >= bucket_bytes or i == len(grads) - 1:
            flat = torch.cat([b.reshape(-1) for b in bucket])
            dist.all_reduce(flat)
            offset = 0
            for b in bucket:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()
            bucket, size = [], 0


@dataclass
class _TaskData:
    """A task's micro-batch stream of stored values, a few samples for its picture, and how a
    batch becomes model inputs on the device."""

    loader: Any
    preview: Callable[[int], dict[str, torch.Tensor]]
    specs: list[SensorSpec]
    where: str
    nodata: str
    held_out: ArrayDataset | None = None
    """The task's validation set (``data.val_samples``), never in its training batches."""

    def prepare(self, batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        """Copy a stored batch to ``device`` and standardise it there (one op chain per sensor);
        the nodata error names the batch's samples by index."""
        return model_batch(to_device(batch, device), self.specs, self.nodata, self.where)  # type: ignore[arg-type]


def _task_datasets(cfg: PretrainConfig, method: Any) -> dict[str, ArrayDataset]:
    """In-memory/memory-mapped datasets of the tasks not fed by shards: for each task, the rows
    where every sensor it needs is available."""
    cache: dict[str | None, tuple[dict[str, Any], str]] = {}
    datasets = {}
    for task in method.tasks:
        path = _task_path(cfg, task)
        if is_shard_set(path):
            continue
        if path not in cache:
            if path is not None:
                cache[path] = (load_arrays(path), str(path))
            else:
                cache[path] = (simulated_arrays(cfg.data.simulated), "simulated data")
        arrays, source = cache[path]
        sensors = method.task_sensors(task)
        rows = available_rows(arrays, sensors)
        if len(rows) == 0:
            raise ValueError(f"{source}: task {task!r} has an empty dataset (no sample has all of {sensors})")
        datasets[task] = ArrayDataset(arrays, sensor_specs(sensors, cfg.data.stats), cfg.data.nodata,
                                      source=source, indices=rows, standardise=False)
    return datasets


def _task_path(cfg: PretrainConfig, task: str) -> str | None:
    return (cfg.data.task_paths or {}).get(task, cfg.data.path)


def _task_data(cfg: PretrainConfig, method: Any, d: _Dist, micro: int,
               steps_of: dict[str, list[int]]) -> dict[str, _TaskData]:
    """Each task's loader: step-keyed for arrays, an epoch-resumable stream for shard sets."""
    from s12mae.shards import read_manifest, resume_epoch, shard_loader

    unknown = sorted(set(cfg.data.task_paths or {}) - set(method.tasks))
    if unknown:
        raise ValueError(f"data.task_paths names unknown task(s) {unknown}; the tasks are {list(method.tasks)}")
    arrays, held_out = split_held_out(_task_datasets(cfg, method), method.tasks, cfg.data.val_samples,
                                      cfg.train.eval_every)
    pin = d.device.type == "cuda"
    out = {}
    for task in method.tasks:
        if task in arrays:
            ds = arrays[task]
            loader = task_loader(ds, steps_of[task], cfg.train.batch_size, micro, cfg.train.seed,
                                 d.rank, d.world, cfg.data.num_workers, pin_memory=pin)
            out[task] = _TaskData(iter(loader), lambda n, ds=ds: default_collate([ds[i] for i in range(min(n, len(ds)))]),
                                  ds.sensors, f"{ds.source}: task {task!r}", cfg.data.nodata, held_out.get(task))
            continue
        path = str(_task_path(cfg, task))
        if read_manifest(path)["num_samples"] == 0:
            raise ValueError(f"{path}: task {task!r} has an empty dataset (the shard set holds no sample)")
        specs = sensor_specs(method.task_sensors(task), cfg.data.stats)
        done = (steps_of[task][0] if steps_of[task] else 0) * cfg.train.batch_size  # task samples before start

        def make(epoch: int, batch: int, path: str = path, specs: list = specs, workers: int = cfg.data.num_workers) -> Any:
            return shard_loader(path, specs, batch, cfg.train.seed, d.rank, d.world, workers,
                                cfg.data.shuffle_buffer, epoch, cfg.data.nodata, standardise=False, pin_memory=pin)

        loader = make(resume_epoch(path, done), micro)
        out[task] = _TaskData(iter(loader), lambda n, make=make: next(iter(make(0, n, workers=0))), specs,
                              f"{path}: task {task!r}", cfg.data.nodata)
    return out


def _next_batches(td: _TaskData, accum: int, device: torch.device) -> tuple[list[dict[str, torch.Tensor]], float]:
    """The step's micro-batches as model inputs on the device, and the seconds spent waiting for
    the loader (the data path's share of the step; ~0 when workers keep up)."""
    batches, wait = [], 0.0
    for _ in range(accum):
        t0 = time.perf_counter()
        cpu_batch = next(td.loader)
        wait += time.perf_counter() - t0
        batches.append(td.prepare(cpu_batch, device))
    return batches, wait


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak memory of the step: CUDA's max allocated bytes since the step began, or on a CPU the
    process's peak resident set so far (``getrusage``; it never goes down), labelled."""
    if device.type == "cuda":
        return {"peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20, "peak_mem_kind": "cuda_max_allocated"}
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return {"peak_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20,
            "peak_mem_kind": "cpu_peak_rss"}


def _unsharded(method: nn.Module, cfg: PretrainConfig, d: _Dist, sharded: bool) -> nn.Module:
    """An FSDP method's full weights in a plain copy on rank 0 (for pictures and the export; a
    collective); other ranks and unsharded methods get ``method`` back."""
    if not sharded:
        return method
    weights = parallel.full_state_dict(method)
    if d.rank != 0:
        return method
    full = build_method(cfg).to(d.device)
    full.load_state_dict(weights)
    return full


def _wrap(method: nn.Module, cfg: PretrainConfig, d: _Dist) -> bool:
    """Checkpointing, compilation and (under ``train.parallel: fsdp``) FSDP2, in place; whether
    the method is sharded."""
    parallel.set_grad_checkpointing(method, cfg.train.grad_checkpointing)
    if parallel.wants_compile(cfg.train.compile, d.device):
        parallel.compile_blocks(method)
    if cfg.train.parallel != "fsdp" or d.world == 1:
        return False
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and d.device.type == "cuda")
    parallel.shard_method(method, bf16)
    return True


def _batch_sizes(cfg: PretrainConfig, d: _Dist) -> tuple[int, int]:
    global_batch = cfg.train.batch_size
    if global_batch % d.world:
        raise ValueError(f"train.batch_size {global_batch} is not divisible by the world size {d.world}")
    per_rank = global_batch // d.world
    micro = cfg.train.micro_batch_size or per_rank
    if per_rank % micro:
        raise ValueError(
            f"train.micro_batch_size {micro} does not divide the per-rank batch {per_rank} "
            f"(batch_size {global_batch} / world size {d.world})"
        )
    return micro, per_rank // micro


def _checkpoint_to_resume(run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume, or ``None``; refuses to start over an existing run."""
    if resume:
        return latest_checkpoint(run_dir)
    if (run_dir / "latest").exists():
        raise FileExistsError(
            f"{run_dir}: already holds a run with checkpoints; pass --resume to continue it "
            "or choose another train.out_dir"
        )
    return None


# Settings that may change when a run is resumed: they do not change what is computed, except
# train.steps, which stretches the cosine schedule from the resumed step on. train.out_dir is the
# folder the saved config was read from: relative, with a trailing slash or moved, it is the same run.
_RESUME_MAY_CHANGE = {"train.steps", "train.progress", "train.threads", "train.log_every",
                      "train.checkpoint_every", "train.device", "data.num_workers", "train.logger",
                      "train.eval_every", "train.out_dir", "train.local_dir", "train.compile", "train.grad_checkpointing",
                      "train.probe_every", *(f"train.probe.{f.name}" for f in fields(ProbeConfig))}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _check_resumable(run_dir: Path, cfg: PretrainConfig, start: int) -> None:
    """A resumed run must keep the saved config but for the keys in ``_RESUME_MAY_CHANGE``.

    A ``config.yaml`` written before the per-method sections (flat ``model.mix_*``/``model.aux_*``
    keys) is upgraded on read and compared in today's layout; the resumed run rewrites it so.
    """
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = _flatten(upgrade_saved_config(yaml.safe_load(saved_path.read_text()) or {}, str(saved_path)))
    now = _flatten(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k not in _RESUME_MAY_CHANGE)
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:6])
        raise ValueError(f"{saved_path}: resuming with a different config ({detail}); resume with the "
                         "run's own settings (only train.steps and logging/device settings may change)")


def _trim_metrics(path: Path, start_step: int) -> list[dict[str, Any]]:
    """Keep the metrics lines of steps before ``start_step`` (after a resume)."""
    if not path.exists():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut off by the crash that the resume recovers from
            continue
        if record["step"] < start_step:
            kept.append(record)
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))
    return [r for r in kept if "loss" in r]  # the step records; held-out ones carry "val_loss"


def pretrain(cfg: PretrainConfig, resume: bool = False, callbacks: Sequence[Callback] = ()) -> RunResult:
    """Run (or resume) pretraining as configured.

    Args:
        cfg: the resolved run config.
        resume: continue from the run folder's latest checkpoint with the same masks, schedule and
            optimizer state as an uninterrupted run, and the same data order for array datasets
            (shard streams restart at the epoch boundary). The config must be the saved one,
            except ``train.steps`` and logging/device settings.
        callbacks: called as ``cb(step, record)`` after each optimizer step on every rank.

    Returns:
        The run folder, the metrics (on rank 0: every logged step of the run, earlier sessions
        included; on other ranks: this session's steps) and the trained model.
    """
    d = _setup(cfg)
    errors = RankErrors(d.world, d.device)
    mirror = RunMirror(cfg.train.out_dir, cfg.train.local_dir) if is_url(cfg.train.out_dir) else None
    # locked for this run; a killed run's temporaries removed; nothing left if it fails before a checkpoint
    with RunFolder(mirror.local if mirror else Path(cfg.train.out_dir), d.rank, errors) as folder:
        with errors.caught():
            if mirror is not None and d.rank == 0:
                mirror.pull(resume)  # refuses to start over the URL's run, or downloads what a resume needs
        errors.raise_if_any()
        with errors.caught():
            resume_from = _checkpoint_to_resume(folder.path, resume)
        errors.raise_if_any()
        return _pretrain(cfg, d, errors, folder.path, resume_from, callbacks, mirror)


def _pretrain(asked: PretrainConfig, d: _Dist, errors: RankErrors, run_dir: Path, resume_from: Path | None,
              callbacks: Sequence[Callback], mirror: RunMirror | None = None) -> RunResult:
    """The run in its locked folder; ``asked`` is the config as given (saved, compared on resume);
    ``mirror``: the URL the folder is uploaded to after each checkpoint and at the end (rank 0)."""
    push = mirror.push if mirror is not None and d.rank == 0 else lambda strict=True: None
    torch.manual_seed(asked.train.seed)  # identical initial weights on every rank
    method = build_method(asked).to(d.device)  # statistics do not enter the weights
    sensors = sorted({s for task in method.tasks for s in method.task_sensors(task)})
    with errors.caught():  # rank 0 writes the statistics of simulated data if none are given; the others wait
        cfg = with_data_statistics(asked, run_dir, sensors, write=d.rank == 0)
    errors.raise_if_any()
    state = load_checkpoint(resume_from, method) if resume_from is not None and not is_sharded(resume_from) else None
    sharded = _wrap(method, cfg, d)
    optimizer = build_optimizer(method, cfg.optim)
    start = 0
    if resume_from is not None:
        if is_sharded(resume_from) != sharded:
            raise ValueError(f"{resume_from}: was written {'with' if is_sharded(resume_from) else 'without'} "
                             f"FSDP; resume it with the run's own train.parallel and number of ranks")
        if sharded:
            state = load_sharded_checkpoint(resume_from, method, optimizer)
        else:
            optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"])
        start = int(state["step"])
        _check_resumable(run_dir, asked, start)
        if start > cfg.train.steps:
            raise ValueError(f"{resume_from}: holds {start} steps, more than train.steps={cfg.train.steps}")
    if start == cfg.train.steps:  # trained, but the end of the run (pictures, export) may be missing
        history = _trim_metrics(run_dir / "metrics.jsonl", start) if d.rank == 0 else []
        method = _unsharded(method, cfg, d, sharded)
        if d.rank == 0:
            _finish(run_dir, cfg, method, _task_data(cfg, method, d, 1, {t: [] for t in method.tasks}),
                    cfg.train.steps - 1, d.device)
            push()
        return RunResult(run_dir, history, method)
    micro, accum = _batch_sizes(cfg, d)
    schedule = TaskSchedule(method.tasks, cfg.schedule.sequence, cfg.schedule.weights, cfg.train.seed)
    steps_of = schedule.task_steps(start, cfg.train.steps)
    data = _task_data(cfg, method, d, micro, steps_of)
    params = [p for p in method.parameters() if p.requires_grad]
    autocast = autocast_context(d.device, cfg.train.precision)

    metrics_path = run_dir / "metrics.jsonl"
    history: list[dict[str, Any]] = []
    sinks = Sinks()
    if d.rank == 0:
        atomic_write(run_dir / "config.yaml", yaml.safe_dump(asked.to_dict(), sort_keys=False))
        history = _trim_metrics(metrics_path, start)
        sinks = open_sinks(cfg.train.logger, run_dir, asked.to_dict(), start)  # the config as given, like config.yaml
    val_cache: dict[str, list] = {}
    probe = None
    with errors.caught():  # a probe task that cannot be built stops every rank before the first step
        if d.rank == 0 and cfg.train.probe_every:
            probe = FrozenProbe(cfg.train.probe, cfg.data.stats, cfg.model.img_size, d.device, autocast)
    errors.raise_if_any()
    this_run: list[dict[str, Any]] = []
    show = cfg.train.progress and d.rank == 0
    interactive = show and sys.stderr.isatty()
    bar = tqdm(total=cfg.train.steps, initial=start, disable=not interactive,
               desc=f"pretrain {cfg.method}", dynamic_ncols=True)
    every = max(cfg.train.steps // 10, 1)  # plain progress lines when stderr is a log file
    empty = EmptyTargets(cfg.data.max_empty_steps)
    method.train()
    for step in range(start, cfg.train.steps):
        t0 = time.perf_counter()
        _reset_peak_memory(d.device)
        torch.manual_seed(step_seed(cfg.train.seed, step, d.rank))  # unkeyed draws (drop path) repeat on resume
        task = schedule.task_at(step)
        weights = method.term_weights(task)
        with errors.caught():  # a data error on one rank stops every rank at the check below
            batches, data_wait = _next_batches(data[task], accum, d.device)  # model inputs on the device
            counts = [method.denominators(b, task, step) for b in batches]
        errors.raise_if_any()
        dens = torch.stack([torch.stack([c[t].float() for t in weights]) for c in counts]).sum(0)
        global_counts = _all_reduce(dens.to(d.device), d)
        dens = global_counts.clamp_min(1.0)
        sums = torch.zeros(len(weights), device=d.device)
        with errors.caught():
            for b in batches:
                with autocast:
                    nums = method(b, task, step)
                terms = torch.stack([nums[t].float() for t in weights])
                loss = (terms / dens * torch.tensor(list(weights.values()), device=d.device)).sum()
                loss.backward()
                sums += terms.detach()
        errors.raise_if_any()
        if not sharded:  # FSDP2 has reduce-scattered them in the backward
            _all_reduce_grads(params, d)
        with_grad = [p for p in params if p.grad is not None]
        max_norm = cfg.optim.clip_grad if cfg.optim.clip_grad is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(with_grad, max_norm)
        lr = lr_at(step, cfg.train.steps, cfg.optim)
        set_lr(optimizer, lr)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        term_losses = (_all_reduce(sums, d) / dens).tolist()
        empty.check(step, task, list(weights), global_counts.tolist())  # the same on every rank
        seconds = time.perf_counter() - t0
        record = {
            "step": step, "task": task,
            "loss": sum(w * v for w, v in zip(weights.values(), term_losses)),
            **{f"loss/{t}": v for t, v in zip(weights, term_losses)},
            "grad_norm": float(grad_norm), "lr": lr,
            "samples_per_s": cfg.train.batch_size / seconds, "seconds": seconds,
            "data_wait_s": data_wait, **_peak_memory(d.device),
        }
        this_run.append(record)
        if d.rank == 0:
            if step % cfg.train.log_every == 0 or step == cfg.train.steps - 1:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                sinks.log(record)
            bar.set_postfix(task=task, loss=f"{record['loss']:.4f}", sps=f"{record['samples_per_s']:.0f}")
            bar.update(1)
            if show and not interactive and (step % every == 0 or step == cfg.train.steps - 1):
                print(f"pretrain {cfg.method} step {step + 1}/{cfg.train.steps} task={task} "
                      f"loss={record['loss']:.4f} samples/s={record['samples_per_s']:.0f}", flush=True)
        for cb in callbacks:
            cb(step, record)
        done = step + 1
        held_now = bool(cfg.train.eval_every) and (done % cfg.train.eval_every == 0 or done == cfg.train.steps)
        probe_now = bool(cfg.train.probe_every) and (done % cfg.train.probe_every == 0 or done == cfg.train.steps)
        with errors.caught():  # a held-out loss or probe failing on rank 0 stops every rank, not only rank 0
            if d.rank == 0 and held_now:
                held = {t: td.held_out for t, td in data.items() if td.held_out is not None}
                for val_record in held_out_losses(method, held, micro, d.device, autocast, step, val_cache,
                                                  {t: data[t].prepare for t in held}):
                    with metrics_path.open("a") as f:
                        f.write(json.dumps(val_record) + "\n")
                    sinks.log(val_record)
            if probe is not None and probe_now:
                probe_record = probe(method, step)
                with metrics_path.open("a") as f:
                    f.write(json.dumps(probe_record) + "\n")
                sinks.log(probe_record)
        if held_now or probe_now:
            errors.raise_if_any()
        if done % cfg.train.checkpoint_every == 0 or done == cfg.train.steps:
            loop_state = {"rng_cpu": torch.get_rng_state(), "method": cfg.method}
            with errors.caught():  # a full disk on rank 0 stops every rank
                if sharded:  # every rank writes its shards
                    save_sharded_checkpoint(run_dir, done, method, optimizer, loop_state)
                elif d.rank == 0:
                    save_checkpoint(run_dir, done, method, {**loop_state, "optimizer": optimizer.state_dict()})
                    push(strict=False)  # a URL's copy follows every checkpoint; a failure retries at the next
            errors.raise_if_any()
    bar.close()
    sinks.close()
    method = _unsharded(method, cfg, d, sharded)
    with errors.caught():  # pictures and export on rank 0; its failure stops every rank
        if d.rank == 0:
            _finish(run_dir, cfg, method, data, cfg.train.steps - 1, d.device)
            push()
    errors.raise_if_any()  # a collective: also the barrier at the end of the run
    return RunResult(run_dir, history + this_run if d.rank == 0 else this_run, method)


def _finish(run_dir: Path, cfg: PretrainConfig, method: Any, data: dict[str, _TaskData],
            step: int, device: torch.device) -> None:
    """Loss curve, probe curve (if probed), reconstruction pictures and the exported encoder."""
    from s12mae.export import save_encoder
    from s12mae.viz import plot_loss_curve, plot_reconstructions

    plot_loss_curve(run_dir / "metrics.jsonl", run_dir / "loss_curve.png")
    plot_probe_curve(run_dir / "metrics.jsonl", run_dir / "probe_curve.png")  # only if probes were logged
    method.eval()
    for task, td in data.items():
        batch = td.prepare(td.preview(4), device)
        plot_reconstructions(method.visualize(batch, task, step), run_dir / f"reconstruction_{task}.png",
                             cfg.data.stats)
    if hasattr(method, "prepare_export"):  # optional hook, e.g. MixMAE folds its sensor embeddings
        method.prepare_export()
    save_encoder(method.encoder, run_dir / "encoder.safetensors", cfg)
