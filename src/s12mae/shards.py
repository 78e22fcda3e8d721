"""WebDataset tar shards of chips: an offline writer and a streaming training loader.

Prepare data offline, training only reads it: :func:`write_shards` cuts reader samples into
chips and writes them to ``shard-000000.tar``, ``shard-000001.tar``, ... plus a manifest
``shards.json``; :func:`shard_loader` streams them back as micro-batches in exactly the format of
:class:`s12mae.data.ArrayDataset`. One folder is one shard set; write the paired set
(``sensors=[s2_l1c, s1_grd]``) and the S2-only set (``sensors=[s2_l1c]``) into separate folders so
alternating gradient descent gives each task its own stream.

Format (version 1). Sample key = the chip's global index, 12 digits; members sorted by name::

    000000000513.json               {"id", "scene_id", "index", "crop", "meta"}  (sorted keys)
    000000000513.<sensor>.npy        (C, H, W) file values: S2 int16/uint16 DN (0 = nodata),
                                     S1/DEM float32 or float16 (NaN = nodata)
    000000000513.valid.<sensor>.npy  (C, H, ceil(W / 8)) uint8, ``np.packbits(valid, axis=-1)``
    000000000513.label.<name>.npy    labels as given (cropped with the chip when spatial)

Valid masks are stored packed (1 bit per pixel) rather than re-derived from nodata values: a
reader's mask may hold more than the nodata value says (e.g. pixels outside a warped footprint),
and packing round-trips it exactly for ~1/16 of the int16 payload. Index = shard * chips_per_shard
+ position, unique within a shard set and stable across reruns (masks are keyed by it).

Determinism and crash safety: tar headers carry mtime 0, uid/gid 0, no user names, mode 0644;
``.npy`` and JSON bytes are canonical, so the same input and config give byte-identical shards.
Each shard is written to ``shard-N.tar.tmp`` and renamed when complete (readers list only
``*.tar``); after each rename ``shards.progress.json`` records where the input stands, so a rerun
skips the complete shards and redoes the partial one; ``shards.json`` is written atomically last.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from s12mae.sensors import SensorSpec, get_sensor

__all__ = [
    "FORMAT_VERSION",
    "ShardConfig",
    "ShardStream",
    "read_manifest",
    "read_samples",
    "resume_epoch",
    "shard_loader",
    "shards_cli",
    "simulated_samples",
    "write_shards",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "shards.json"
PROGRESS = "shards.progress.json"
_SHARD_RE = re.compile(r"^shard-(\d{6})\.tar$")
_EXT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_INT_DTYPES = ("int16", "uint16")
_FLOAT_DTYPES = ("float32", "float16")


@dataclass
class ShardConfig:
    """How scenes become chips and chips become shards."""

    sensors: list[str] = field(default_factory=lambda: ["s2_l1c"])
    """Sensor keys of this shard set; scenes lacking one of them are left out (and counted)."""
    chip_size: int | None = None
    """Side of a chip in pixels; ``None`` keeps whole scenes (``crop`` must be ``none``)."""
    crop: Literal["none", "grid", "random"] = "none"
    """``grid``: non-overlapping chips row by row from the top-left (the right/bottom remainder is
    dropped); ``random``: ``crops_per_scene`` chips at positions drawn from (seed, scene id)."""
    crops_per_scene: int = 1
    """Chips per scene under ``crop=random``."""
    seed: int = 0
    """Seed of the random crop positions."""
    chips_per_shard: int = 256
    """Chips per shard (the last shard may hold fewer)."""
    dtypes: dict[str, str] = field(default_factory=dict)
    """Storage dtype per sensor (default: the spec's ``file_dtype``): ``int16``/``uint16`` for DN
    sensors, ``float32``/``float16`` for float ones (float16 rounds to half a unit in the last place:
    <= 0.0078 dB where |dB| < 32, <= 0.0156 dB where |dB| < 64)."""
    labels: list[str] | None = None
    """Label keys (``label.*``) to keep; ``None`` keeps every one the samples have."""
    min_valid: float = 0.0
    """Chips whose fraction of valid pixels (all sensors, all bands) is below this are dropped."""

    def __post_init__(self) -> None:
        if not self.sensors or len(set(self.sensors)) != len(self.sensors):
            raise ValueError(f"shards.sensors: need distinct sensor keys, got {self.sensors}")
        for key in self.sensors:
            spec = get_sensor(key)
            dtype = self.dtypes.get(key, spec.file_dtype)
            allowed = _FLOAT_DTYPES if math.isnan(spec.nodata) else _INT_DTYPES
            if dtype not in allowed:
                raise ValueError(f"shards.dtypes: {key} can be stored as {allowed}, got {dtype!r}")
        unknown = sorted(set(self.dtypes) - set(self.sensors))
        if unknown:
            raise ValueError(f"shards.dtypes: names sensor(s) {unknown} that are not in {self.sensors}")
        if self.crop == "none" and self.chip_size is not None:
            raise ValueError("shards.chip_size: set crop to grid or random to cut chips")
        if self.crop != "none" and (self.chip_size is None or self.chip_size < 1):
            raise ValueError(f"shards.chip_size: crop={self.crop} needs a chip size >= 1")
        if self.crops_per_scene < 1 or self.chips_per_shard < 1:
            raise ValueError("shards.crops_per_scene and shards.chips_per_shard must be >= 1")
        if not 0.0 <= self.min_valid <= 1.0:
            raise ValueError(f"shards.min_valid: must be in [0, 1], got {self.min_valid}")
        for key in self.labels or []:
            if not key.startswith("label.") or not _EXT_RE.match(key):
                raise ValueError(f"shards.labels: {key!r} is not a label key (label.<name>)")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), sort_keys=True))

    def storage_dtype(self, key: str) -> str:
        return self.dtypes.get(key, get_sensor(key).file_dtype)


# -- encoding ---------------------------------------------------------------------------------


def _npy_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    x = np.ascontiguousarray(x)
    np.save(buf, x.astype(x.dtype.newbyteorder("<")), allow_pickle=False)  # little-endian always
    return buf.getvalue()


def _npy_load(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


def _plain(x: Any) -> Any:
    """``x`` as JSON will read it back (lists for tuples and arrays, Python numbers)."""
    return json.loads(json.dumps(x, default=_json_default))


def _json_bytes(x: Any) -> bytes:
    return json.dumps(x, sort_keys=True, separators=(",", ":"), default=_json_default).encode()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _scene_seed(seed: int, scene_id: str) -> list[int]:
    digest = hashlib.sha256(scene_id.encode()).digest()
    return [seed, int.from_bytes(digest[:8], "little")]


# -- chips --------------------------------------------------------------------------------------


def _crop_positions(h: int, w: int, cfg: ShardConfig, scene_id: str) -> list[tuple[int, int]]:
    if cfg.crop == "none":
        return [(0, 0)]
    s = int(cfg.chip_size)  # type: ignore[arg-type]
    if h < s or w < s:
        return []
    if cfg.crop == "grid":
        return [(y, x) for y in range(0, h - s + 1, s) for x in range(0, w - s + 1, s)]
    rng = np.random.default_rng(_scene_seed(cfg.seed, scene_id))
    ys = rng.integers(0, h - s + 1, cfg.crops_per_scene)
    xs = rng.integers(0, w - s + 1, cfg.crops_per_scene)
    return [(int(y), int(x)) for y, x in zip(ys, xs)]


def _crop_meta(meta: Mapping[str, Any], y: int, x: int, s: int) -> dict[str, Any]:
    """Scene metadata with transform, bounds and footprint of the chip at (y, x)."""
    out = _plain(meta)
    t = out.get("transform")
    if not t or len(t) != 6:
        return out
    a, b, c, d, e, f = t
    out["transform"] = [a, b, a * x + b * y + c, d, e, d * x + e * y + f]
    corners = [(a * cx + b * cy + c, d * cx + e * cy + f) for cy in (y, y + s) for cx in (x, x + s)]
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    out["bounds"] = [min(xs), min(ys), max(xs), max(ys)]
    if out.get("crs"):
        from rasterio.warp import transform_bounds

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


def _scene_chips(sample: Mapping[str, Any], cfg: ShardConfig, where: str) -> tuple[list[dict[str, Any]], int]:
    """Chips of one scene (validated) and the number dropped by ``min_valid``."""
    if "id" not in sample:
        raise ValueError(f"{where}: sample has no 'id'")
    scene_id = str(sample["id"])
    where = f"{where} (sample {scene_id!r})"
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
    h, w = grids.pop()
    labels = sorted(k for k in sample if k.startswith("label.") and (cfg.labels is None or k in cfg.labels))
    missing = sorted(set(cfg.labels or []) - set(labels))
    if missing:
        raise ValueError(f"{where}: has no label(s) {missing}")
    for key in labels:
        if not _EXT_RE.match(key):
            raise ValueError(f"{where}: label key {key!r} is not usable as a tar member name")
    stored = {k: _store(k, np.asarray(sample[k]), cfg.storage_dtype(k), where) for k in cfg.sensors}
    chips, dropped = [], 0
    for y, x in _crop_positions(h, w, cfg, scene_id):
        s_h, s_w = (h, w) if cfg.crop == "none" else (cfg.chip_size, cfg.chip_size)
        chip: dict[str, Any] = {}
        for key in cfg.sensors:
            chip[key] = stored[key][:, y:y + s_h, x:x + s_w]
            chip[f"valid.{key}"] = np.asarray(sample[f"valid.{key}"], dtype=bool)[:, y:y + s_h, x:x + s_w]
        n_valid = sum(int(chip[f"valid.{k}"].sum()) for k in cfg.sensors)
        if n_valid < cfg.min_valid * sum(chip[f"valid.{k}"].size for k in cfg.sensors):
            dropped += 1
            continue
        for key in labels:
            lab = np.asarray(sample[key])
            chip[key] = lab if cfg.crop == "none" else _crop_label(lab, h, w, y, x, s_h)
        cropped = cfg.crop != "none"
        chip["id"] = f"{scene_id}/{y}_{x}" if cropped else scene_id
        chip["scene_id"] = scene_id
        chip["crop"] = {"y": y, "x": x, "size": s_h} if cropped else None
        meta = sample.get("meta", {})
        chip["meta"] = _crop_meta(meta, y, x, s_h) if cropped else _plain(meta)
        chips.append(chip)
    return chips, dropped


def _chip_members(chip: Mapping[str, Any], index: int, cfg: ShardConfig) -> list[tuple[str, bytes]]:
    key = f"{index:012d}"
    head = {"id": chip["id"], "scene_id": chip["scene_id"], "index": index, "crop": chip["crop"],
            "meta": chip["meta"]}
    members = [(f"{key}.json", _json_bytes(head))]
    for sensor in cfg.sensors:
        members.append((f"{key}.{sensor}.npy", _npy_bytes(chip[sensor])))
        packed = np.packbits(chip[f"valid.{sensor}"], axis=-1)  # (C, H, ceil(W / 8)), big bit order
        members.append((f"{key}.valid.{sensor}.npy", _npy_bytes(packed)))
    members += [(f"{key}.{k}.npy", _npy_bytes(np.asarray(chip[k]))) for k in chip if k.startswith("label.")]
    return sorted(members)


# -- writing ----------------------------------------------------------------------------------


def _fresh_counters() -> dict[str, Any]:
    return {"scenes": 0, "used": 0, "missing_sensor": 0, "too_small": 0, "low_valid_chips": 0, "skipped": []}


def _clear(out: Path) -> None:
    for p in out.iterdir():
        if _SHARD_RE.match(p.name) or p.name.endswith(".tar.tmp") or p.name in (MANIFEST, PROGRESS):
            p.unlink()


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
    want, num_input = cfg.to_dict(), len(samples)
    for name in (MANIFEST, PROGRESS):
        path = out / name
        if path.exists():
            old = json.loads(path.read_text())
            if (old["config"], old["input_samples"]) != (want, num_input):
                if not overwrite:
                    raise ValueError(f"{path}: holds a shard set written with another config or from "
                                     "another input; choose another folder or pass overwrite=True")
                _clear(out)
    if (out / MANIFEST).exists():
        log.info("%s: shard set is complete; nothing to do", out)
        return read_manifest(out)
    state = {"config": want, "input_samples": num_input, "shards": [], "scene": 0, "after_chip": -1,
             "counters": _fresh_counters()}
    if (out / PROGRESS).exists():
        saved = json.loads((out / PROGRESS).read_text())
        intact = all((out / s["name"]).is_file() and (out / s["name"]).stat().st_size == s["bytes"]
                     for s in saved["shards"])
        if intact:
            state = saved
            log.info("%s: resuming after %d complete shard(s)", out, len(state["shards"]))
        else:
            log.warning("%s: a shard listed in %s is missing or changed; writing all again", out, PROGRESS)
    shards: list[dict[str, Any]] = state["shards"]

    counters = _plain(state["counters"])  # live; snapshots go to the progress file
    start, after_chip = state["scene"], state["after_chip"]

    def chips() -> Iterator[tuple[dict[str, Any], int, int, dict[str, Any]]]:
        """(chip, scene position, chip number, counters before this scene), from the resume point."""
        for pos in range(start, num_input):
            before = _plain(counters)
            counters["scenes"] += 1
            try:
                sample = samples[pos]
                if any(k not in sample for k in cfg.sensors):
                    counters["missing_sensor"] += 1
                    continue
                found, dropped = _scene_chips(sample, cfg, f"sample {pos}")
            except ValueError as err:
                if not skip_bad:
                    raise
                log.warning("skipping sample %d: %s", pos, err)
                counters["skipped"].append([pos, str(err)])
                continue
            counters["used"] += 1
            counters["too_small"] += not found and not dropped
            counters["low_valid_chips"] += dropped
            for j, chip in enumerate(found):
                if pos == start and j <= after_chip:  # written before the interruption
                    continue
                yield chip, pos, j, before

    stream = chips()
    done = False
    while not done:
        number = len(shards)
        path = out / f"shard-{number:06d}.tar"
        tmp = path.with_name(path.name + ".tmp")
        count, last = 0, None
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for chip, pos, j, before in stream:
                for name, data in _chip_members(chip, number * cfg.chips_per_shard + count, cfg):
                    _add_member(tar, name, data)
                count, last = count + 1, (pos, j, before)
                if count == cfg.chips_per_shard:
                    break
            else:
                done = True
        if count == 0:
            tmp.unlink()
            break
        os.replace(tmp, path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        shards.append({"name": path.name, "samples": count, "bytes": path.stat().st_size, "sha256": digest})
        pos, j, before = last  # type: ignore[misc]
        state.update(scene=pos, after_chip=j, counters=before)
        _atomic_write(out / PROGRESS, _json_bytes(state))
    total = sum(s["samples"] for s in shards)
    for p in out.iterdir():  # temps and shards renamed just before a crash could record them
        m = _SHARD_RE.match(p.name)
        if (m and int(m.group(1)) >= len(shards)) or p.name.endswith(".tar.tmp"):
            p.unlink()
    if total == 0:
        (out / PROGRESS).unlink(missing_ok=True)
        raise ValueError(f"{out}: no chip was written from {num_input} sample(s): {counters}")
    manifest = {
        "format": "s12mae-shards", "format_version": FORMAT_VERSION, "config": want,
        "input_samples": num_input,
        "sensors": {k: {"dtype": cfg.storage_dtype(k), "bands": get_sensor(k).band_names,
                        "nodata": get_sensor(k).nodata if not math.isnan(get_sensor(k).nodata) else "nan"}
                    for k in cfg.sensors},
        "num_samples": total, "num_shards": len(shards), "shards": shards, "scenes": counters,
    }
    _atomic_write(out / MANIFEST, json.dumps(manifest, sort_keys=True, indent=1).encode())
    (out / PROGRESS).unlink(missing_ok=True)
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest ``shards.json`` of the shard set in folder ``path``."""
    file = Path(path) / MANIFEST
    try:
        manifest = json.loads(file.read_text())
    except FileNotFoundError:
        raise ValueError(f"{file}: not found; the shard set is incomplete (rerun `s12mae shards`)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{file}: format version {manifest.get('format_version')}, this reader reads "
                         f"{FORMAT_VERSION}")
    return manifest


def resume_epoch(path: str | Path, samples_seen: int) -> int:
    """The epoch to restart a stream at after ``samples_seen`` samples (e.g. steps x batch size).

    A stream resumes at an epoch boundary: the samples of the interrupted epoch are seen again.
    """
    return samples_seen // read_manifest(path)["num_samples"]


# -- reading ----------------------------------------------------------------------------------


def _raise(shard: Path, member: str, reason: str) -> None:
    raise ValueError(f"{shard}: member {member}: {reason}")


def _read_shard(shard: Path, expect: Mapping[str, Any] | None,
                bad: Callable[[Path, str, str], None] = _raise) -> Iterator[dict[str, Any]]:
    """Decoded raw samples ``{"__key__", "__shard__", "json", <ext>: array}`` of one shard.

    ``bad(shard, member, reason)`` is called on a corrupt/truncated tar (then reading stops), a
    member that fails to decode (its sample is dropped) or a count/size that disagrees with
    ``expect`` (the shard's manifest entry); it raises or records.
    """
    if expect is not None and shard.stat().st_size != expect["bytes"]:
        bad(shard, "-", f"is {shard.stat().st_size} bytes, the manifest says {expect['bytes']} "
                        "(truncated or overwritten)")
        return
    current: dict[str, Any] = {}
    bad_key, member, count = None, "-", 0
    try:
        with tarfile.open(shard, mode="r|") as tar:
            for info in tar:
                member = info.name
                key, _, ext = member.partition(".")
                if current and key != current["__key__"]:
                    if current["__key__"] != bad_key:
                        count += 1
                        yield current
                    current = {}
                if not current:
                    current = {"__key__": key, "__shard__": str(shard)}
                if not info.isfile() or not ext:
                    bad(shard, member, "is not a sample file (key.ext)")
                    bad_key = key
                    continue
                data = tar.extractfile(info).read()  # type: ignore[union-attr]
                try:
                    current[ext] = json.loads(data) if ext == "json" else _npy_load(data)
                except (ValueError, OSError, EOFError) as err:
                    bad(shard, member, f"cannot be decoded ({err})")
                    bad_key = key
            end = tar.offset  # tarfile ends quietly at a truncation on a block boundary: check the marker
        with open(shard, "rb") as f:
            f.seek(end)
            if f.read(2 * tarfile.BLOCKSIZE) != bytes(2 * tarfile.BLOCKSIZE):
                raise tarfile.ReadError("no end-of-archive marker after the last member")
    except (tarfile.TarError, EOFError, OSError) as err:
        bad(shard, member, f"the tar file is corrupt or truncated ({err})")
        return
    if current and current["__key__"] != bad_key:
        count += 1
        yield current
    if expect is not None and count != expect["samples"]:
        bad(shard, "-", f"holds {count} samples, the manifest says {expect['samples']}")


def read_samples(path: str | Path) -> Iterator[dict[str, Any]]:
    """The chips of a shard set (folder, in index order) or of one shard, in reader format.

    Yields ``{"id", "scene_id", "index", "crop", "meta", <sensor>: (C, H, W) stored dtype,
    "valid.<sensor>": (C, H, W) bool, "label.*": ...}``; for inspection, statistics and tests.

    Raises:
        ValueError: a corrupt or truncated shard or an undecodable member (names file and member).
    """
    path = Path(path)
    shards = sorted(p for p in path.iterdir() if _SHARD_RE.match(p.name)) if path.is_dir() else [path]
    manifest = read_manifest(path) if path.is_dir() and (path / MANIFEST).exists() else None
    expected = {s["name"]: s for s in manifest["shards"]} if manifest else {}
    for shard in shards:
        for raw in _read_shard(shard, expected.get(shard.name)):
            head = raw.get("json") or {}
            sample = {k: head.get(k) for k in ("id", "scene_id", "index", "crop", "meta")}
            for ext, value in raw.items():
                if ext.startswith("__") or ext == "json":
                    continue
                key = ext.removesuffix(".npy")
                if key.startswith("valid."):
                    width = raw[key.removeprefix("valid.") + ".npy"].shape[-1]
                    value = np.unpackbits(value, axis=-1, count=width).astype(bool)
                sample[key] = value
            yield sample


class ShardStream(IterableDataset):
    """Infinite stream of training samples from a shard set, split by rank and worker.

    Each epoch ``e`` the shards are permuted by ``(seed, e)`` (the same on every rank); rank ``r``
    takes ``perm[r::world]`` and worker ``w`` of its DataLoader ``[w::workers]`` of those. If there
    are fewer shards than ``world * workers``, every consumer reads every shard and keeps the
    samples at stream positions ``p % (world * workers) == rank * workers + worker`` (correct but
    each consumer decodes all data). Samples pass through a shuffle buffer seeded by
    ``(seed, e, consumer)`` that is flushed at the end of each epoch, so epochs never mix and the
    stream restarts exactly at any epoch. Ranks may hold different numbers of samples per epoch,
    so their epoch counters may drift apart; within an epoch no sample goes to two consumers.

    Args:
        path: shard-set folder; only ``shard-NNNNNN.tar`` files are read (temps are ignored).
        sensors: specs of the sensors to serve (their statistics standardise the values).
        seed: run seed.
        rank: this process's rank; world: the number of ranks.
        shuffle_buffer: samples held for shuffling per consumer; <= 1 keeps shard order.
        epoch: the first epoch of the stream.
        nodata: ``error`` raises on a nodata/non-finite value naming sample and shard; ``mask``
            fills them with 0 and adds ``valid.<sensor>`` (stored mask and finite values).
        extra_keys: label keys (``label.*``) to serve as tensors.
        skip_bad: a corrupt or truncated shard, or a member that fails to decode, is logged and
            recorded in :attr:`skipped` (per process) instead of raising.

    Attributes:
        skipped: ``(shard, member, reason)`` of everything skipped by this process.
    """

    def __init__(self, path: str | Path, sensors: Sequence[SensorSpec], seed: int, rank: int = 0,
                 world: int = 1, shuffle_buffer: int = 256, epoch: int = 0,
                 nodata: Literal["error", "mask"] = "error", extra_keys: Sequence[str] = (),
                 skip_bad: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise ValueError(f"{self.path}: no such shard-set folder")
        self.shards = sorted(p for p in self.path.iterdir() if _SHARD_RE.match(p.name))
        if not self.shards:
            raise ValueError(f"{self.path}: holds no shard-NNNNNN.tar files")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, {world})")
        self.manifest = read_manifest(self.path) if (self.path / MANIFEST).exists() else None
        self.expected: dict[str, dict[str, Any]] = {}
        if self.manifest is not None:
            self.expected = {s["name"]: s for s in self.manifest["shards"]}
            have = self.manifest["sensors"]
            for spec in sensors:
                if spec.key not in have:
                    raise ValueError(f"{self.path}: shard set holds sensors {sorted(have)}, not {spec.key}")
                if have[spec.key]["bands"] != spec.band_names:
                    raise ValueError(f"{self.path}: {spec.key} has bands {have[spec.key]['bands']}, the "
                                     f"sensor spec expects {spec.band_names}")
        self.sensors, self.seed, self.rank, self.world = list(sensors), seed, rank, world
        self.shuffle_buffer, self.epoch, self.nodata = shuffle_buffer, epoch, nodata
        self.extra_keys, self.skip_bad = list(extra_keys), skip_bad
        self.skipped: list[tuple[str, str, str]] = []

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = self.epoch
        while True:
            n = 0
            for sample in self.iter_epoch(epoch, worker, workers):
                n += 1
                yield sample
            if n == 0:
                raise ValueError(f"{self.path}: epoch {epoch} gave rank {self.rank} worker {worker} no "
                                 f"sample ({len(self.shards)} shard(s) for {self.world * workers} consumers)")
            epoch += 1

    def iter_epoch(self, epoch: int, worker: int = 0, workers: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        """The training samples of one epoch for this rank's ``worker`` of ``workers``."""
        consumers, me = self.world * workers, self.rank * workers + worker
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        by_shard = len(self.shards) >= consumers
        mine = perm[self.rank::self.world][worker::workers] if by_shard else perm
        raw = (s for i in mine for s in self._read_shard(self.shards[i]))
        if not by_shard:
            raw = (s for p, s in enumerate(raw) if p % consumers == me)
        rng = np.random.default_rng([self.seed, epoch, me])
        for sample in _shuffled(raw, self.shuffle_buffer, rng):
            yield self._to_training(sample)

    def _bad(self, shard: Path, member: str, reason: str) -> None:
        msg = f"{shard}: member {member}: {reason}"
        if not self.skip_bad:
            raise ValueError(msg)
        log.warning("skipping %s", msg)
        self.skipped.append((str(shard), member, reason))

    def _read_shard(self, shard: Path) -> Iterator[dict[str, Any]]:
        return _read_shard(shard, self.expected.get(shard.name), self._bad)

    def _to_training(self, raw: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Raw decoded sample to the ArrayDataset format (standardised float32, index, masks)."""
        head = raw.get("json")
        where = f"{raw['__shard__']}: sample {raw['__key__']}"
        if head is None:
            raise ValueError(f"{where}: has no .json member")
        where = f"{raw['__shard__']}: sample {head.get('id')!r} (key {raw['__key__']})"
        out: dict[str, torch.Tensor] = {"index": torch.tensor(int(head["index"]), dtype=torch.int64)}
        for spec in self.sensors:
            dn, packed = raw.get(f"{spec.key}.npy"), raw.get(f"valid.{spec.key}.npy")
            if dn is None or packed is None:
                raise ValueError(f"{where}: has no {spec.key} (or its valid mask); it holds "
                                 f"{sorted(k for k in raw if not k.startswith('__'))}")
            if dn.ndim != 3 or dn.shape[0] != spec.num_channels:
                raise ValueError(f"{where}: {spec.key} has shape {dn.shape}, the sensor spec expects "
                                 f"({spec.num_channels}, H, W) with bands {spec.band_names}")
            valid = np.unpackbits(packed, axis=-1, count=dn.shape[-1]).astype(bool)
            if valid.shape != dn.shape:
                raise ValueError(f"{where}: valid.{spec.key} has shape {valid.shape}, not {dn.shape}")
            x = spec.normalize(spec.to_units(torch.from_numpy(dn)))
            ok = torch.isfinite(x) & torch.from_numpy(valid)
            if self.nodata == "error" and not bool(ok.all()):
                raise ValueError(f"{where}: has {int((~ok).sum())} nodata/non-finite value(s) in {spec.key}; "
                                 "set data.nodata=mask to leave them out of the loss")
            if self.nodata == "mask":
                out[f"valid.{spec.key}"] = ok
                x = torch.where(ok, x, 0.0)
            out[spec.key] = x
        for key in self.extra_keys:
            if f"{key}.npy" not in raw:
                raise ValueError(f"{where}: has no {key}")
            out[key] = torch.from_numpy(raw[f"{key}.npy"])
        return out


def _shuffled(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Buffer shuffle: keep ``size`` items, emit a random one per new item, flush at the end."""
    if size <= 1:
        yield from items
        return
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = int(rng.integers(size))
        buf[i], item = item, buf[i]
        yield item
    for i in rng.permutation(len(buf)):
        yield buf[i]


def shard_loader(path: str | Path, sensors: Sequence[SensorSpec], micro_batch_size: int, seed: int,
                 rank: int = 0, world: int = 1, num_workers: int = 0, shuffle_buffer: int = 256,
                 epoch: int = 0, nodata: Literal["error", "mask"] = "error",
                 extra_keys: Sequence[str] = (), skip_bad: bool = False) -> DataLoader:
    """Endless loader of this rank's micro-batches from a shard set (see :class:`ShardStream`).

    ``iter(loader)`` then ``next()`` gives ``{sensor: (B, C, H, W) float32, "index": (B,) int64,
    ["valid.<sensor>": (B, C, H, W) bool]}``, as :func:`s12mae.data.task_loader` does. Batches
    run on across epoch boundaries; each DataLoader worker batches its own share.
    """
    stream = ShardStream(path, sensors, seed, rank, world, shuffle_buffer, epoch, nodata, extra_keys,
                         skip_bad)
    return DataLoader(stream, batch_size=micro_batch_size, num_workers=num_workers,
                      pin_memory=torch.cuda.is_available())


# -- sources and the command line -------------------------------------------------------------


class _SimulatedSamples(Sequence):
    """A folder written by ``s12mae simulate`` as reader samples (S1 only where available)."""

    def __init__(self, path: str | Path) -> None:
        from s12mae.simulate import load_simulated

        self.path = str(path)
        self.arrays, self.info = load_simulated(path)

    def __len__(self) -> int:
        return len(self.arrays["s2_l1c"])

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        a = self.arrays
        s2 = np.array(a["s2_l1c"][i])
        sample: dict[str, Any] = {"id": f"sim-{i:06d}", "s2_l1c": s2, "valid.s2_l1c": s2 != 0,
                                  "meta": {"source": "simulated", "scene": i, "crs": None, "times": {}}}
        if "s1_grd" in a and bool(a.get("available.s1_grd", np.ones(len(self), np.uint8))[i]):
            s1 = np.array(a["s1_grd"][i])
            sample["s1_grd"], sample["valid.s1_grd"] = s1, np.isfinite(s1)
            sample["meta"]["gap_hours"] = 0.0
        for key in ("cloud", "water", "landcover_presence", "landcover_hr"):
            if key in a:
                sample[f"label.{key}"] = np.array(a[key][i])
        return sample


def simulated_samples(path: str | Path) -> Sequence[dict[str, Any]]:
    """Reader-format samples of a simulated dataset folder (for ``s12mae shards --layout simulated``)."""
    return _SimulatedSamples(path)


def shards_cli(data: str, out: str, cfg: ShardConfig, layout: str = "simulated", skip_bad: bool = False,
               overwrite: bool = False) -> dict[str, Any]:
    """``s12mae shards``: write the shard set of ``cfg`` from dataset ``data`` into ``out``.

    ``layout`` names how ``data`` is laid out (a key of :data:`s12mae.layouts.LAYOUTS`: ``simulated``,
    ``terramesh``, ``sen1floods11``, ``bigearthnet-v1``, ``bigearthnet-v2``, ``generic``, ``pairs``,
    ``s2-all``); only ``cfg.sensors`` (and ``cfg.labels``, where given) are read. Under ``skip_bad``
    the manifest records samples that fail to load; samples a reader already found bad while
    listing the dataset are printed (they never reach the writer).
    """
    from s12mae.layouts import open_layout

    keys = [*cfg.sensors, *(cfg.labels or [])]
    samples = open_layout(layout, data, keys, skip_bad=skip_bad)
    manifest = write_shards(samples, out, cfg, skip_bad=skip_bad, overwrite=overwrite)
    sc = manifest["scenes"]
    listed_bad = list(getattr(samples, "skipped", []))
    print(f"wrote {manifest['num_samples']} chips in {manifest['num_shards']} shard(s) to {out} "
          f"({sc['used']} of {sc['scenes']} scenes used; {sc['missing_sensor']} lack a sensor, "
          f"{len(sc['skipped'])} skipped as bad, {sc['too_small']} smaller than a chip"
          + (f"; the {layout} reader left out {len(listed_bad)}: {listed_bad}" if listed_bad else "") + ")")
    return manifest
