"""Writing shard sets: scenes cut into chips, chips packed into shards, resumable after a crash.

:func:`write_shards` takes reader samples (an indexable sequence, see :mod:`s12mae.readers.base`);
:func:`write_shard_set` opens a dataset layout by name first (``s12mae shards``). Chips are cut
per :class:`~s12mae.shards.format.ShardConfig`: whole scenes, a grid, or random positions drawn
from (seed, scene id), so the chips of a scene never depend on the other scenes. A sample that is
one chip-sized window of a bigger scene (``meta["window"]``: scene id and offset, see
:func:`layout_opener`) keeps the ids and crop offsets of that scene's chips.

Crash safety: each shard is written under a temporary name and renamed when complete (readers
list only ``shard-NNNNNN.tar``); after each rename ``shards.progress.json`` records where the
input stands, so a rerun skips the complete shards and redoes the partial one; ``shards.json`` is
written last. All three go through :mod:`s12mae.files`.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import shutil
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from s12mae.files import atomic_path, atomic_write, remove_stale_temps
from s12mae.sensors import get_sensor
from s12mae.shards.format import (
    MANIFEST,
    MEMBER_RE,
    PROGRESS,
    SHARD_RE,
    ShardConfig,
    add_member,
    chip_members,
    json_bytes,
    manifest_bytes,
    new_manifest,
    plain,
    read_manifest,
)

__all__ = ["layout_opener", "write_shard_set", "write_shards"]

log = logging.getLogger(__name__)

PLAN = "shards.plan.json"
"""Written by the Dask writer of earlier versions (chips per scene); still honoured as proof that a
folder's shards belong to this config and input. Today both writers keep ``shards.progress.json``."""

Chip = dict[str, Any]
Placed = tuple[Chip, int, int, dict[str, Any]]
"""A chip with its scene position, its number in the scene and the counters before its scene."""


# -- chips ----------------------------------------------------------------------------------------


def _scene_seed(seed: int, scene_id: str) -> list[int]:
    digest = hashlib.sha256(scene_id.encode()).digest()
    return [seed, int.from_bytes(digest[:8], "little")]


def _crop_positions(h: int, w: int, cfg: ShardConfig, scene_id: str) -> list[tuple[int, int]]:
    if cfg.crop == "none":
        return [(0, 0)]
    s = int(cfg.chip_size)  # type: ignore[arg-type]
    if h < s or w < s:
        return []
    if cfg.crop == "grid":  # the rule that windowed readers cut scenes by, too
        from s12mae.readers.windows import grid_positions  # rasterio only where chips are cut

        return grid_positions(h, w, s)
    rng = np.random.default_rng(_scene_seed(cfg.seed, scene_id))
    ys = rng.integers(0, h - s + 1, cfg.crops_per_scene)
    xs = rng.integers(0, w - s + 1, cfg.crops_per_scene)
    return [(int(y), int(x)) for y, x in zip(ys, xs)]


def _crop_meta(meta: Mapping[str, Any], y: int, x: int, s: int) -> dict[str, Any]:
    """Scene metadata with transform, bounds and footprint of the chip at (y, x)."""
    out = plain(meta)
    t = out.get("transform")
    if not t or len(t) != 6:
        return out
    a, b, c, d, e, f = t
    out["transform"] = [a, b, a * x + b * y + c, d, e, d * x + e * y + f]
    corners = [(a * cx + b * cy + c, d * cx + e * cy + f) for cy in (y, y + s) for cx in (x, x + s)]
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    out["bounds"] = [min(xs), min(ys), max(xs), max(ys)]
    if out.get("crs"):
        from rasterio.warp import transform_bounds  # rasterio only where chips carry a CRS

        footprint = transform_bounds(out["crs"], "EPSG:4326", *out["bounds"], densify_pts=21)
        out["footprint_wgs84"] = [float(v) for v in footprint]
    return out


def _crop_label(x: np.ndarray, h: int, w: int, y0: int, x0: int, s: int) -> np.ndarray:
    """Crop a label whose last two dims are the scene grid or a k-times finer one; else keep it."""
    if x.ndim < 2 or x.shape[-2] % h or x.shape[-1] % w or x.shape[-2] // h != x.shape[-1] // w:
        return x
    k = x.shape[-2] // h
    return x[..., y0 * k:(y0 + s) * k, x0 * k:(x0 + s) * k]


def _store(key: str, x: np.ndarray, dtype: str, where: str) -> np.ndarray:
    """Cast sensor ``key`` to its storage dtype; integer targets must hold every value exactly."""
    target = np.dtype(dtype)
    if target.kind in "iu":
        if x.dtype.kind not in "iu":
            raise ValueError(f"{where}: {key} is {x.dtype}, expected integer DN ({dtype})")
        info = np.iinfo(target)
        if x.size and (int(x.min()) < info.min or int(x.max()) > info.max):
            raise ValueError(f"{where}: {key} values [{x.min()}, {x.max()}] do not fit {dtype}")
    elif x.dtype.kind != "f":
        raise ValueError(f"{where}: {key} is {x.dtype}, expected float values")
    return x.astype(target)


def _check_scene(sample: Mapping[str, Any], cfg: ShardConfig,
                 where: str) -> tuple[tuple[int, int], list[str]]:
    """The scene's grid ``(H, W)`` and the label keys to keep; a ValueError names what is wrong."""
    grids = set()
    for key in cfg.sensors:
        spec, x = get_sensor(key), np.asarray(sample[key])
        if x.ndim != 3 or x.shape[0] != spec.num_channels:
            raise ValueError(f"{where}: {key} has shape {x.shape}, expected ({spec.num_channels}, H, W) "
                             f"with bands {spec.band_names}")
        valid = sample.get(f"valid.{key}")
        if valid is None or np.shape(valid) != x.shape:
            raise ValueError(f"{where}: valid.{key} is missing or not of shape {x.shape}")
        grids.add(x.shape[1:])
    if len(grids) != 1:
        raise ValueError(f"{where}: sensors {cfg.sensors} are on different grids {sorted(grids)}")
    labels = sorted(k for k in sample if k.startswith("label.") and (cfg.labels is None or k in cfg.labels))
    missing = sorted(set(cfg.labels or []) - set(labels))
    if missing:
        raise ValueError(f"{where}: has no label(s) {missing}")
    for key in labels:
        if not MEMBER_RE.match(key):
            raise ValueError(f"{where}: label key {key!r} is not usable as a tar member name")
    return grids.pop(), labels


def _low_valid(chip: Chip, cfg: ShardConfig) -> str | None:
    """Why ``chip`` holds too few valid pixels (the first rule it fails), or ``None``."""
    for key in cfg.sensors:
        frac = float(chip[f"valid.{key}"].mean()) if chip[f"valid.{key}"].size else 0.0
        if frac < cfg.min_valid_per_sensor:
            return f"{key} valid < min_valid_per_sensor {cfg.min_valid_per_sensor:g}"
    n_valid = sum(int(chip[f"valid.{k}"].sum()) for k in cfg.sensors)
    if n_valid < cfg.min_valid * sum(chip[f"valid.{k}"].size for k in cfg.sensors):
        return f"valid < min_valid {cfg.min_valid:g}"
    return None


def _scene_chips(sample: Mapping[str, Any], cfg: ShardConfig, where: str) -> tuple[list[Chip], dict[str, int]]:
    """Chips of one scene (validated) and the number dropped for too few valid pixels, by reason."""
    if "id" not in sample:
        raise ValueError(f"{where}: sample has no 'id'")
    scene_id, (y0, x0) = str(sample["id"]), (0, 0)
    where = f"{where} (sample {scene_id!r})"
    window = sample.get("meta", {}).get("window")  # a chip-sized window read alone: ids of its scene
    if cfg.crop != "none" and window:
        scene_id, y0, x0 = str(window["scene"]), int(window["y"]), int(window["x"])
    (h, w), labels = _check_scene(sample, cfg, where)
    stored = {k: _store(k, np.asarray(sample[k]), cfg.storage_dtype(k), where) for k in cfg.sensors}
    cropped = cfg.crop != "none"
    s_h, s_w = (cfg.chip_size, cfg.chip_size) if cropped else (h, w)
    chips: list[Chip] = []
    dropped: dict[str, int] = {}
    for y, x in _crop_positions(h, w, cfg, scene_id):
        chip: Chip = {}
        for key in cfg.sensors:
            chip[key] = stored[key][:, y:y + s_h, x:x + s_w]
            chip[f"valid.{key}"] = np.asarray(sample[f"valid.{key}"], dtype=bool)[:, y:y + s_h, x:x + s_w]
        reason = _low_valid(chip, cfg)
        if reason is not None:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        for key in labels:
            lab = np.asarray(sample[key])
            chip[key] = _crop_label(lab, h, w, y, x, s_h) if cropped else lab
        meta = sample.get("meta", {})
        chip["id"] = f"{scene_id}/{y0 + y}_{x0 + x}" if cropped else scene_id
        chip["scene_id"] = scene_id
        chip["crop"] = {"y": y0 + y, "x": x0 + x, "size": s_h} if cropped else None
        chip["meta"] = _crop_meta(meta, y, x, s_h) if cropped else plain(meta)
        chips.append(chip)
    return chips, dropped


def _fresh_counters() -> dict[str, Any]:
    return {"scenes": 0, "used": 0, "missing_sensor": 0, "too_small": 0, "low_valid_chips": 0,
            "low_valid_reasons": {}, "skipped": []}


def _scene_at(samples: Sequence[Mapping[str, Any]], pos: int, cfg: ShardConfig, counters: dict[str, Any],
              skip_bad: bool) -> list[Chip]:
    """The chips of scene ``pos`` of ``samples``; ``counters`` (live) count it. The one home of the
    per-scene rule, shared by the one-process writer and the Dask one (:mod:`s12mae.shards.parallel`)."""
    counters["scenes"] += 1
    try:
        sample = samples[pos]
        if any(k not in sample for k in cfg.sensors):
            counters["missing_sensor"] += 1
            return []
        found, dropped = _scene_chips(sample, cfg, f"sample {pos}")
    except ValueError as err:
        if not skip_bad:
            raise
        log.warning("skipping sample %d: %s", pos, err)
        counters["skipped"].append([pos, str(err)])
        return []
    counters["used"] += 1
    counters["too_small"] += not found and not dropped
    counters["low_valid_chips"] += sum(dropped.values())
    for reason, n in dropped.items():
        counters["low_valid_reasons"][reason] = counters["low_valid_reasons"].get(reason, 0) + n
    return found


def _placed_chips(samples: Sequence[Mapping[str, Any]], cfg: ShardConfig, state: Mapping[str, Any],
                  counters: dict[str, Any], skip_bad: bool) -> Iterator[Placed]:
    """The chips from the resume point of ``state`` on; ``counters`` (live) count the scenes read."""
    start, after_chip = state["scene"], state["after_chip"]
    for pos in range(start, len(samples)):
        before = plain(counters)
        found = _scene_at(samples, pos, cfg, counters, skip_bad)
        for j, chip in enumerate(found):
            if pos == start and j <= after_chip:  # written before the interruption
                continue
            yield chip, pos, j, before


# -- the shard set --------------------------------------------------------------------------------


def _remove_leftovers(out: Path, num_shards: int) -> None:
    """Temporaries of a killed writer, and shards renamed just before a crash could record them."""
    remove_stale_temps(out, prefix=".shard")
    for p in out.iterdir():
        m = SHARD_RE.match(p.name)
        if (m and int(m.group(1)) >= num_shards) or p.name.endswith(".tar.tmp"):  # .tar.tmp: older writers
            p.unlink()


def _check_same_input(out: Path, cfg: ShardConfig, num_input: int, overwrite: bool) -> None:
    """A folder holding a set (or a partial one) of another config or input is an error or is cleared."""
    for name in (MANIFEST, PROGRESS, PLAN):
        path = out / name
        if not path.exists():
            continue
        old = json.loads(path.read_text())
        if (old["config"], old["input_samples"]) != (cfg.to_dict(), num_input):
            if not overwrite:
                raise ValueError(f"{path}: holds a shard set written with another config or from "
                                 "another input; choose another folder or pass overwrite=True")
            _remove_leftovers(out, 0)
            for stale in (MANIFEST, PROGRESS, PLAN):
                (out / stale).unlink(missing_ok=True)


def _resume_state(out: Path, cfg: ShardConfig, num_input: int) -> dict[str, Any]:
    """Where the last run stopped (its complete shards intact), or the start."""
    state = {"config": cfg.to_dict(), "input_samples": num_input, "shards": [], "scene": 0,
             "after_chip": -1, "counters": _fresh_counters()}
    if not (out / PROGRESS).exists():
        return state
    saved = json.loads((out / PROGRESS).read_text())
    if not all((out / s["name"]).is_file() and (out / s["name"]).stat().st_size == s["bytes"]
               for s in saved["shards"]):
        log.warning("%s: a shard listed in %s is missing or changed; writing all again", out, PROGRESS)
        return state
    log.info("%s: resuming after %d complete shard(s)", out, len(saved["shards"]))
    return saved


def _write_shard(path: Path, number: int, chips: Iterator[Placed],
                 cfg: ShardConfig) -> tuple[dict[str, Any], Placed]:
    """Write ``chips`` (at least one) as shard ``number``; its manifest entry and its last chip."""
    count, last = 0, None
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for placed in chips:
            for name, data in chip_members(placed[0], number * cfg.chips_per_shard + count, cfg.sensors):
                add_member(tar, name, data)
            count, last = count + 1, placed
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    entry = {"name": path.name, "samples": count, "bytes": path.stat().st_size, "sha256": digest}
    return entry, last  # type: ignore[return-value]


def _removes_new_folder_on_failure(write: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """A failed write leaves no folder it created, unless it holds complete shards (resumable)."""

    @functools.wraps(write)
    def wrapper(samples: Sequence[Mapping[str, Any]], out: str | Path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        created = not Path(out).exists()
        try:
            return write(samples, out, *args, **kwargs)
        except BaseException:
            folder = Path(out)
            if created and folder.is_dir() and not (folder / PROGRESS).exists():
                shutil.rmtree(folder, ignore_errors=True)
            raise

    return wrapper


@_removes_new_folder_on_failure
def write_shards(samples: Sequence[Mapping[str, Any]], out: str | Path, cfg: ShardConfig, *,
                 skip_bad: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Cut ``samples`` into chips and write them as a shard set in ``out``; resumes a partial run.

    Args:
        samples: reader samples (``{"id", <sensor>, "valid.<sensor>", "label.*", "meta"}``, file
            units), indexable so that a rerun can start where the last complete shard ended.
        out: folder of this shard set (created).
        cfg: chips, dtypes and shard size.
        skip_bad: a sample that fails to load or validate (``ValueError``) is logged, recorded in
            the manifest's ``scenes.skipped`` and left out, instead of stopping the run.
        overwrite: replace a shard set written with another config (else that is an error).

    Returns:
        The manifest (also written to ``out/shards.json``).

    Raises:
        ValueError: a bad sample (without ``skip_bad``; the message names it), ``out`` holds a shard
            set of another config, or no chip was written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    num_input = len(samples)
    _check_same_input(out, cfg, num_input, overwrite)
    if (out / MANIFEST).exists():
        log.info("%s: shard set is complete; nothing to do", out)
        return read_manifest(out)
    state = _resume_state(out, cfg, num_input)
    shards: list[dict[str, Any]] = state["shards"]
    counters = plain(state["counters"])  # live; snapshots go to the progress file
    chips = _placed_chips(samples, cfg, state, counters, skip_bad)
    while (first := next(chips, None)) is not None:
        batch = itertools.islice(itertools.chain([first], chips), cfg.chips_per_shard)
        path = out / f"shard-{len(shards):06d}.tar"
        entry, (_, pos, j, before) = _write_shard(path, len(shards), batch, cfg)
        shards.append(entry)
        state.update(scene=pos, after_chip=j, counters=before)
        atomic_write(out / PROGRESS, json_bytes(state))
    _remove_leftovers(out, len(shards))
    if not shards:
        (out / PROGRESS).unlink(missing_ok=True)
        raise ValueError(f"{out}: no chip was written from {num_input} sample(s): {counters}")
    manifest = new_manifest(cfg, num_input, shards, counters)
    atomic_write(out / MANIFEST, manifest_bytes(manifest))
    (out / PROGRESS).unlink(missing_ok=True)
    return manifest


def write_shard_set(data: str | Path, out: str | Path, cfg: ShardConfig, layout: str = "simulated",
                    skip_bad: bool = False, overwrite: bool = False,
                    split: list[str] | None = None) -> dict[str, Any]:
    """``s12mae shards``: write the shard set of ``cfg`` from dataset ``data`` into ``out``.

    ``layout`` names how ``data`` is laid out (a key of :data:`s12mae.layouts.LAYOUTS`: ``simulated``,
    ``terramesh``, ``sen1floods11``, ``bigearthnet-v1``, ``bigearthnet-v2``, ``generic``, ``pairs``,
    ``s2-all``); only ``cfg.sensors`` (and ``cfg.labels``, where given) are read. Under ``skip_bad``
    the manifest records samples that fail to load; samples a reader already found bad while
    listing the dataset are printed (they never reach the writer). ``split`` keeps only those
    splits of a layout that has splits (see :func:`s12mae.layouts.open_layout`). Prints a summary
    that lists the skipped samples with their reasons. On a Dask cluster:
    :func:`s12mae.shards.parallel.write_shard_set_dask` (the same bytes).

    Returns:
        The manifest of :func:`write_shards`.
    """
    samples = layout_opener(layout, data, cfg, skip_bad, split)()
    manifest = write_shards(samples, out, cfg, skip_bad=skip_bad, overwrite=overwrite)
    print_summary(manifest, out, layout, list(getattr(samples, "skipped", [])))
    return manifest


def layout_opener(layout: str, data: str | Path, cfg: ShardConfig, skip_bad: bool = False,
                  split: list[str] | None = None) -> Callable[[], Sequence[Mapping[str, Any]]]:
    """A picklable ``() -> samples`` that opens ``data`` as ``layout`` for the shard set of ``cfg``
    (its sensors and labels only). Under ``crop="grid"`` the layout is opened with ``chip_size``:
    ``pairs``/``s2-all`` rows with asset hrefs then give one chip-sized sample per grid chip, read
    by a windowed read (:class:`s12mae.layouts.PairFolder`), which the writer cuts into exactly that
    one chip; ``crop="random"`` reads whole scenes."""
    from s12mae.layouts import open_layout  # the readers (rasterio) only where a layout is opened

    chip_size = cfg.chip_size if cfg.crop == "grid" else None
    return functools.partial(open_layout, layout, str(data), [*cfg.sensors, *(cfg.labels or [])],
                             skip_bad=skip_bad, split=split, chip_size=chip_size)


def print_summary(manifest: Mapping[str, Any], out: str | Path, layout: str, listed_bad: list[Any],
                  most: int = 20) -> None:
    """One line of counts, then each skipped sample with its reason (the first ``most`` of them)."""
    sc = manifest["scenes"]
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(sc.get("low_valid_reasons", {}).items()))
    print(f"wrote {manifest['num_samples']} chips in {manifest['num_shards']} shard(s) to {out} "
          f"({sc['used']} of {sc['scenes']} scenes used; {sc['missing_sensor']} lack a sensor, "
          f"{len(sc['skipped'])} skipped as bad, {sc['too_small']} smaller than a chip; "
          f"{sc['low_valid_chips']} chip(s) dropped for nodata" + (f" ({reasons})" if reasons else "")
          + (f"; the {layout} reader left out {len(listed_bad)}" if listed_bad else "") + ")")
    bad = [(f"sample {pos}", str(reason)) for pos, reason in sc["skipped"]]
    bad += [(str(b[0]), f"{b[1]} (left out by the reader)") if isinstance(b, (tuple, list)) and len(b) == 2
            else (str(b), "left out by the reader") for b in listed_bad]
    for name, reason in bad[:most]:
        print(f"  skipped {name}: {reason}")
    if len(bad) > most:
        print(f"  ... and {len(bad) - most} more (shards.json lists the samples skipped as bad)")
