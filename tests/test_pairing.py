"""S1/S2 pairing: the real SSL4EO-S12 sample, the edge cases of the rule, every input format, a
brute-force reference, atomic outputs and bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import shapely
from conftest import SHARED_DATA

from s12mae import pairing
from s12mae.pairing import load_items, pair, pair_cli

DATA = SHARED_DATA
T0 = datetime(2021, 3, 1, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
D = timedelta(days=1)


def shared(folder: str) -> Path:
    path = DATA / folder
    if not path.is_dir():
        pytest.skip(f"real sample folder {path} is absent (shared data is not part of the repository)")
    return path


def table(rows: list[dict]) -> pa.Table:
    """Items as a table: id, time, and bbox (minlon..maxlat) or WKT footprint, location."""
    cols = {
        k: [r.get(k) for r in rows]
        for k in ("id", "time", "minlon", "minlat", "maxlon", "maxlat", "footprint", "location", "path")
    }
    cols["time"] = pa.array(cols["time"], pa.timestamp("us", tz="UTC"))
    for k in ("minlon", "minlat", "maxlon", "maxlat"):
        cols[k] = pa.array(cols[k], pa.float64())
    for k in ("id", "footprint", "location", "path"):
        cols[k] = pa.array(cols[k], pa.string())
    return pa.table(cols)


def item(id_: str, t: datetime, box=(10.0, 40.0, 11.0, 41.0), **kw) -> dict:
    r = {"id": id_, "time": t, "path": f"/data/{id_}"}
    if box is not None:
        r.update(minlon=box[0], minlat=box[1], maxlon=box[2], maxlat=box[3])
    r.update(kw)
    return r


def run(s2: list[dict], s1: list[dict], **kw) -> pairing.PairResult:
    kw.setdefault("threads", 1)
    return pair(table(s2), table(s1), **kw)


def chosen(res: pairing.PairResult) -> dict[str, str]:
    cols = res.pairs.column("s2_id").to_pylist(), res.pairs.column("s1_id").to_pylist()
    return dict(zip(*cols, strict=True))


# ---------------------------------------------------------------------------------------------
# The real sample
# ---------------------------------------------------------------------------------------------


def test_ssl4eo_sample_gives_one_pair(tmp_path):
    root = shared("ssl4eo-s12-sample")
    stats = pair_cli(str(root), None, out=str(tmp_path / "out"), threads=1, quiet=True)
    pairs = pq.read_table(tmp_path / "out" / "pairs.parquet").to_pylist()
    only = pq.read_table(tmp_path / "out" / "s2_only.parquet").to_pylist()
    assert stats["pairs"] == 1 and stats["s2_only"] == 1
    (p,) = pairs
    assert p["s2_time"].date().isoformat() == "2020-06-04" and p["s1_time"].date().isoformat() == "2020-06-07"
    assert (p["s1_time"].date() - p["s2_time"].date()).days == 3  # gap +3 days (67.1 h: 05:47 -> 01:08 UTC)
    assert p["gap_hours"] == pytest.approx(67.1219, abs=1e-3)
    assert p["s2_id"].startswith("0000200/20200604") and "20200607" in p["s1_id"]
    assert p["location"] == "0000200" and p["match"] == "location"
    assert p["overlap"] == pytest.approx(0.4444, abs=1e-3)  # scene footprints: S2 tile vs S1 slice
    assert Path(p["s2_path"]).parent.parent.name == "s2c" and Path(p["s1_path"]).parent.parent.name == "s1"
    (o,) = only
    assert o["s2_time"].date().isoformat() == "2020-08-23"
    assert o["reason"] == "no_s1_within_max_days"
    assert "20200903" in o["nearest_s1_id"] and o["nearest_gap_hours"] / 24 == pytest.approx(11.3, abs=0.1)
    # the product footprints alone (not the chip location) would pair nothing at min_overlap 0.5
    fp = pair(root, root, match="footprint", threads=1)
    assert fp.pairs.num_rows == 0
    assert fp.s2_only.column("reason").to_pylist() == ["no_s1_same_place", "no_s1_within_max_days"]
    # L2A folder, S1 given as its own folder: the same S1 for 2020-06-04
    l2a = pair(root, root / "s1", s2_product="s2a", threads=1)
    assert list(chosen(l2a).values()) == [p["s1_id"]]


# ---------------------------------------------------------------------------------------------
# Edge cases of the rule
# ---------------------------------------------------------------------------------------------


def test_exactly_max_days_is_paired_and_one_second_more_is_not():
    s2 = [item("a", T0), item("b", T0), item("c", T0 + 100 * D), item("d", T0 + 100 * D)]
    s1 = [
        item("s1-a", T0 + 7 * D, box=(10.0, 40.0, 11.0, 41.0)),
        item("s1-b", T0 - 7 * D - timedelta(seconds=1), box=(20.0, 40.0, 21.0, 41.0)),
        item("s1-c", T0 + 93 * D, box=(30.0, 40.0, 31.0, 41.0)),
        item("s1-d", T0 + 107 * D + timedelta(seconds=1), box=(40.0, 40.0, 41.0, 41.0)),
    ]
    s2[1].update(minlon=20.0, maxlon=21.0)
    s2[2].update(minlon=30.0, maxlon=31.0)
    s2[3].update(minlon=40.0, maxlon=41.0)
    res = run(s2, s1)
    assert chosen(res) == {"a": "s1-a", "c": "s1-c"}
    assert res.pairs.column("gap_hours").to_pylist() == [168.0, -168.0]
    only = {r["s2_id"]: r for r in res.s2_only.to_pylist()}
    assert only["b"]["reason"] == "no_s1_within_max_days"
    assert only["b"]["nearest_gap_hours"] == pytest.approx(-168.0 - 1 / 3600)
    # configurable: 7 days + 1 s fits under max_days = 7.0001
    assert set(chosen(run(s2, s1, max_days=7.0001))) == {"a", "b", "c", "d"}


def test_equal_gaps_before_and_after_the_earlier_s1_wins():
    s2 = [item("a", T0)]
    s1 = [item("after", T0 + 2 * D), item("before", T0 - 2 * D)]
    res = run(s2, s1)
    assert chosen(res) == {"a": "before"} and res.pairs.column("gap_hours").to_pylist() == [-48.0]
    # whatever the input order
    assert chosen(run(s2, s1[::-1])) == {"a": "before"}


def test_several_candidates_the_closest_wins_and_s1_may_serve_several_s2():
    s2 = [item("a", T0), item("b", T0 + 1 * D), item("c", T0 + 5 * D)]
    s1 = [item("far", T0 - 6 * D), item("near", T0 + 12 * H), item("mid", T0 + 3 * D)]
    res = run(s2, s1)
    assert chosen(res) == {"a": "near", "b": "near", "c": "mid"}
    assert res.stats["s1_max_reuse"] == 2 and res.stats["s1_used"] == 2


def test_overlap_threshold_and_ties_at_the_same_time():
    s2 = [item("a", T0, box=(0.0, 0.0, 1.0, 1.0))]
    # 40 % covered, closest in time
    s1 = [
        item("s40", T0 + 1 * H, box=(0.6, 0.0, 2.0, 1.0)),
        item("s60", T0 + 2 * H, box=(0.4, 0.0, 2.0, 1.0)),
    ]
    assert chosen(run(s2, s1)) == {"a": "s60"}
    assert chosen(run(s2, s1, min_overlap=0.3)) == {"a": "s40"}
    res = run(s2, s1, min_overlap=0.7)
    assert res.pairs.num_rows == 0 and res.s2_only.column("reason").to_pylist() == ["no_s1_same_place"]
    # same time: the larger overlap wins, then the smaller s1_id
    s1 = [
        item("z-big", T0 + 1 * H, box=(0.0, 0.0, 1.0, 1.0)),
        item("a-small", T0 + 1 * H, box=(0.3, 0.0, 1.0, 1.0)),
    ]
    assert chosen(run(s2, s1)) == {"a": "z-big"}
    s1 = [item("z", T0 + 1 * H), item("m", T0 + 1 * H), item("q", T0 + 1 * H)]
    assert chosen(run([item("a", T0)], s1)) == {"a": "m"}
    # touching footprints (zero area in common) never pair, even at min_overlap 0
    s1 = [item("touch", T0, box=(1.0, 0.0, 2.0, 1.0))]
    assert run(s2, s1, min_overlap=0.0).pairs.num_rows == 0


def test_antimeridian_footprints_pair_across_180():
    # S2: 179.5 .. -179.5 as a bbox with minlon > maxlon (1 x 1 degree, half on each side)
    s2 = [
        item("cross", T0, box=(179.5, 0.0, -179.5, 1.0)),
        item("cross2", T0 + 20 * D, box=(179.5, 0.0, -179.5, 1.0)),
    ]
    s1 = [
        # a polygon spanning 180 in wrapped coordinates: 179.8 .. -179.2 -> covers 70 % of "cross"
        item(
            "poly",
            T0 + 1 * H,
            box=None,
            footprint="POLYGON ((179.8 0, -179.2 0, -179.2 1, 179.8 1, 179.8 0))",
        ),
        # west side only (-180 .. -179.5): covers 50 %, but later than "poly"
        item("west", T0 + 2 * H, box=(-180.0, 0.0, -179.5, 1.0)),
        # unwrapped coordinates (179.0 .. 180.2): covers 0.5 + 0.2 = 70 % of "cross2"
        item(
            "unwrapped",
            T0 + 20 * D + 1 * H,
            box=None,
            footprint="POLYGON ((179 0, 180.2 0, 180.2 1, 179 1, 179 0))",
        ),
        # same longitudes shifted by 360 on the far side of the map: nothing in common
        item("elsewhere", T0 + 20 * D, box=(-0.5, 0.0, 0.5, 1.0)),
    ]
    res = run(s2, s1)
    assert chosen(res) == {"cross": "poly", "cross2": "unwrapped"}
    assert res.pairs.column("overlap").to_pylist() == pytest.approx([0.7, 0.7])
    # the polygon would not reach 0.75; the west-only box is exactly 0.5
    assert chosen(run(s2[:1], s1, min_overlap=0.75)) == {}
    assert chosen(run(s2[:1], s1[1:2])) == {"cross": "west"}
    assert run(s2[:1], s1[1:2]).pairs.column("overlap").to_pylist() == [0.5]
    # an S2 polygon across 180 against a plain east-side box
    s2p = [item("p", T0, box=None, footprint="POLYGON ((179.5 0, -179.5 0, -179.5 1, 179.5 1, 179.5 0))")]
    res = run(s2p, [item("east", T0, box=(179.0, 0.0, 180.0, 1.0))])
    assert chosen(res) == {"p": "east"} and res.pairs.column("overlap").to_pylist() == pytest.approx([0.5])


def test_missing_geometry_rules():
    s2 = [
        item("nogeo-loc", T0, box=None, location="L1"),  # pairs by location only
        item("nogeo", T0, box=None),  # cannot be placed
        item("geo", T0, box=(10.0, 40.0, 11.0, 41.0)),
    ]
    s1 = [
        item("s1-L1", T0 + 3 * D, box=(50.0, 0.0, 51.0, 1.0), location="L1"),
        item("s1-nogeo", T0 + 1 * H, box=None),  # closest in time, but unusable: ignored, counted
        item("s1-geo", T0 + 2 * D, box=(10.0, 40.0, 11.0, 41.0)),
    ]
    res = run(s2, s1)
    assert chosen(res) == {"nogeo-loc": "s1-L1", "geo": "s1-geo"}
    by = {r["s2_id"]: r for r in res.pairs.to_pylist()}
    assert by["nogeo-loc"]["match"] == "location" and by["nogeo-loc"]["overlap"] is None
    assert by["geo"]["match"] == "footprint" and by["geo"]["overlap"] == 1.0
    (o,) = res.s2_only.to_pylist()
    assert o["s2_id"] == "nogeo" and o["reason"] == "no_footprint" and o["nearest_s1_id"] is None
    assert (
        res.stats["s1_ignored"] == 1
        and res.stats["s1_no_footprint"] == 1
        and res.stats["s2_no_footprint"] == 2
    )
    # footprint-only matching: the location is not used
    res = run(s2, s1, match="footprint")
    assert chosen(res) == {"geo": "s1-geo"} and res.stats["s1_ignored"] == 1
    # an empty WKT counts as missing too
    assert load_items(table([item("e", T0, box=None, footprint="  ")])).has_geom.tolist() == [False]


def test_location_keys_decide_when_both_items_have_one():
    s2 = [item("a", T0, location="L1")]
    s1 = [
        item("same-place-other-loc", T0 + 1 * H, location="L2"),  # footprint equal, location differs
        item("loc", T0 + 2 * D, box=(60.0, 0.0, 61.0, 1.0), location="L1"),
        item("no-loc", T0 + 3 * H),
    ]  # no location: footprints decide
    assert chosen(run(s2, s1)) == {"a": "no-loc"}
    assert chosen(run(s2, s1[:2])) == {"a": "loc"}
    assert chosen(run(s2, s1, match="location")) == {"a": "loc"}
    assert chosen(run(s2, s1, match="footprint")) == {"a": "same-place-other-loc"}


# ---------------------------------------------------------------------------------------------
# Input formats
# ---------------------------------------------------------------------------------------------

FMT_S2 = [
    item("a", T0, box=(10.0, 40.0, 11.0, 41.0), location="L1"),
    item("b", T0 + 10 * D, box=None, footprint="POLYGON ((179.5 0, -179.5 0, -179.5 1, 179.5 1, 179.5 0))"),
    item("c", T0 + 20 * D, box=(-60.0, -10.0, -59.0, -9.0)),
]
FMT_S1 = [
    item("x", T0 + 2 * D, box=(10.5, 40.0, 11.5, 41.0), location="L1"),
    item("y", T0 + 9 * D, box=None, footprint="POLYGON ((179.8 0, -179.2 0, -179.2 1, 179.8 1, 179.8 0))"),
    item("z", T0 + 11 * D, box=(-180.0, 0.0, -179.0, 1.0)),
    item("w", T0 + 40 * D, box=(-60.0, -10.0, -59.0, -9.0)),
]


def _stac_items(rows: list[dict]):
    import pystac

    out = []
    for r in rows:
        if r.get("footprint"):
            geom = shapely.geometry.mapping(shapely.from_wkt(r["footprint"]))
        else:
            geom = shapely.geometry.mapping(shapely.box(r["minlon"], r["minlat"], r["maxlon"], r["maxlat"]))
        props = {"location": r["location"]} if r.get("location") else {}
        out.append(
            pystac.Item(
                id=r["id"],
                geometry=geom,
                bbox=list(shapely.from_geojson(json.dumps(geom)).bounds),
                datetime=r["time"],
                properties=props,
            )
        )
    return out


def _summary(res: pairing.PairResult) -> list[tuple]:
    return [
        (r["s2_id"], r["s1_id"], r["gap_hours"], round(r["overlap"], 9)) for r in res.pairs.to_pylist()
    ] + [
        (r["s2_id"], r["reason"], r["nearest_s1_id"], r["nearest_gap_hours"]) for r in res.s2_only.to_pylist()
    ]


def test_csv_parquet_stac_inputs_agree(tmp_path):
    import pystac

    expected = _summary(run(FMT_S2, FMT_S1))
    assert [e[:2] for e in expected] == [("a", "x"), ("b", "y"), ("c", "no_s1_within_max_days")]
    files = {}
    for side, rows in (("s2", FMT_S2), ("s1", FMT_S1)):
        tab = table(rows)
        # parquet: bbox columns and a WKT footprint where given
        pq.write_table(tab, tmp_path / f"{side}.parquet")
        # CSV: ISO strings with an offset, WKT for every footprint, no bbox columns
        wkt = [
            r.get("footprint") or shapely.box(r["minlon"], r["minlat"], r["maxlon"], r["maxlat"]).wkt
            for r in rows
        ]
        iso = [(r["time"].astimezone(timezone(timedelta(hours=2)))).isoformat() for r in rows]
        pacsv.write_csv(
            pa.table(
                {
                    "id": [r["id"] for r in rows],
                    "time": iso,
                    "footprint": wkt,
                    "location": [r.get("location") for r in rows],
                }
            ),
            tmp_path / f"{side}.csv",
        )
        # STAC: an ItemCollection file and a catalog folder
        items = _stac_items(rows)
        pystac.ItemCollection(items).save_object(dest_href=str(tmp_path / f"{side}-items.json"))
        cat = pystac.Catalog(id=f"{side}-cat", description="test")
        cat.add_items([it.clone() for it in items])
        cat.normalize_and_save(str(tmp_path / f"{side}-cat"), catalog_type=pystac.CatalogType.SELF_CONTAINED)
        files[side] = {
            "parquet": tmp_path / f"{side}.parquet",
            "csv": tmp_path / f"{side}.csv",
            "itemcollection": tmp_path / f"{side}-items.json",
            "catalog": tmp_path / f"{side}-cat",
            "catalog.json": tmp_path / f"{side}-cat" / "catalog.json",
            "items": items,
        }
    for fmt in ("parquet", "csv", "itemcollection", "catalog", "catalog.json", "items"):
        got = _summary(pair(files["s2"][fmt], files["s1"][fmt], threads=1))
        assert got == expected, fmt
    # mixed: S2 from CSV, S1 from STAC
    assert _summary(pair(files["s2"]["csv"], files["s1"]["catalog"], threads=1)) == expected
    # STAC self hrefs become the paths
    res = pair(files["s2"]["catalog"], files["s1"]["catalog"], threads=1)
    assert res.pairs.column("s2_path")[0].as_py().endswith("a.json")


# ---------------------------------------------------------------------------------------------
# Brute-force reference
# ---------------------------------------------------------------------------------------------


def _random_rows(rng: np.random.Generator, n: int, prefix: str) -> list[dict]:
    """Dyadic coordinates (exact in floating point), times on a 6 h grid (many exact ties),
    boxes crossing 180, triangles, missing footprints and some location keys."""
    rows = []
    for k in range(n):
        t = T0 + timedelta(hours=6 * int(rng.integers(0, 240)))
        r = {"id": f"{prefix}{k:04d}", "time": t, "path": f"/{prefix}/{k}"}
        u = rng.random()
        cx = 176.0 + 0.25 * int(rng.integers(0, 64))  # 176 .. 192, wrapped below
        cy = 0.25 * int(rng.integers(0, 32))
        w, h = 0.25 * int(rng.integers(1, 6)), 0.25 * int(rng.integers(1, 6))
        wrap = lambda x: (x + 180.0) % 360.0 - 180.0
        if u < 0.05:
            pass  # no footprint
        elif u < 0.2:
            x0, y0 = wrap(cx), cy
            if x0 + w <= 180:
                r["footprint"] = shapely.Polygon([(x0, y0), (x0 + w, y0), (x0 + w / 2, y0 + h)]).wkt
        else:
            r.update(minlon=wrap(cx), minlat=cy, maxlon=wrap(cx + w), maxlat=cy + h)
        if rng.random() < 0.15:
            r["location"] = f"L{int(rng.integers(0, 4))}"
        rows.append(r)
    return rows


def _ref_geom(r: dict):
    if r.get("footprint"):
        return shapely.from_wkt(r["footprint"])
    if r.get("minlon") is None:
        return None
    x0, y0, x1, y1 = r["minlon"], r["minlat"], r["maxlon"], r["maxlat"]
    if x0 > x1:
        return shapely.MultiPolygon([shapely.box(x0, y0, 180.0, y1), shapely.box(-180.0, y0, x1, y1)])
    return shapely.box(x0, y0, x1, y1)


def _reference(s2: list[dict], s1: list[dict], max_days: float, min_overlap: float, nearest_days: float):
    """Pure Python: every S2 against every S1, the documented rule and order. Also counts how
    often each tie rule decided (another valid candidate equal on the earlier keys)."""
    g1 = np.array([_ref_geom(r) for r in s1], dtype=object)
    t1 = np.array([(r["time"] - T0) / timedelta(microseconds=1) for r in s1], dtype=np.int64)
    out, near, decided = {}, {}, {"earlier": 0, "overlap_or_id": 0}
    for r2 in s2:
        g2 = _ref_geom(r2)
        gaps = t1 - int((r2["time"] - T0) / timedelta(microseconds=1))
        # overlaps with every S1 (one vectorised shapely call per S2; NaN where a footprint is missing)
        ovs = (
            shapely.area(shapely.intersection(g2, g1)) / g2.area
            if g2 is not None
            else np.full(len(s1), np.nan)
        )
        keys = []
        for k in np.flatnonzero(np.abs(gaps) <= nearest_days * 86_400e6):  # (only to save time)
            r1, gap = s1[k], int(gaps[k])
            ov = None if g2 is None or g1[k] is None else float(ovs[k])
            if r2.get("location") and r1.get("location"):
                if r2["location"] != r1["location"]:
                    continue
            elif ov is None or not (ov > 0 and ov >= min_overlap):
                continue
            keys.append((abs(gap), r1["time"], -(ov if ov is not None else -1.0), r1["id"]))
        inside = [k for k in keys if k[0] <= max_days * 86_400e6]
        if inside:
            best = min(inside)
            out[r2["id"]] = best[3]
            decided["earlier"] += any(k[0] == best[0] and k[1] != best[1] for k in inside)
            decided["overlap_or_id"] += any(k[:2] == best[:2] and k[3] != best[3] for k in inside)
        elif keys:
            near[r2["id"]] = min(keys)[3]
    return out, near, decided


def test_duckdb_pairing_matches_brute_force_reference():
    rng = np.random.default_rng(7)
    s2, s1 = _random_rows(rng, 1000, "a"), _random_rows(rng, 1000, "b")
    want, want_near, decided = _reference(s2, s1, 7.0, 0.3, 14.0)
    # a meaningful mix: pairs, S2-only with and without a nearest S1, and ties the rules decide
    assert 300 < len(want) < 900 and len(want_near) > 20, (len(want), len(want_near))
    assert decided["earlier"] >= 10 and decided["overlap_or_id"] >= 5, decided
    for cell in (0.5, 1.0, 7.0):
        res = pair(table(s2), table(s1), min_overlap=0.3, nearest_days=14.0, cell_deg=cell, threads=2)
        assert chosen(res) == want, cell
        only = res.s2_only.to_pylist()
        assert {r["s2_id"]: r["nearest_s1_id"] for r in only if r["nearest_s1_id"]} == want_near
        assert len(only) + res.pairs.num_rows == len(s2)
    t2 = {r["id"]: r["time"] for r in s2}
    t1 = {r["id"]: r["time"] for r in s1}
    for r in res.pairs.to_pylist():
        assert r["gap_hours"] == (t1[r["s1_id"]] - t2[r["s2_id"]]) / H


# ---------------------------------------------------------------------------------------------
# Outputs and errors
# ---------------------------------------------------------------------------------------------


def test_outputs_are_written_atomically(tmp_path, monkeypatch):
    s2, s1 = tmp_path / "s2.parquet", tmp_path / "s1.parquet"
    pq.write_table(table(FMT_S2), s2)
    pq.write_table(table(FMT_S1), s1)
    out = tmp_path / "out"
    pair_cli(str(s2), str(s1), out=str(out), threads=1, quiet=True)
    assert sorted(p.name for p in out.iterdir()) == ["pairs.parquet", "s2_only.parquet"]
    assert pq.read_schema(out / "pairs.parquet").names == pairing.PAIR_SCHEMA.names
    assert pq.read_table(out / "s2_only.parquet").schema.names == pairing.S2_ONLY_SCHEMA.names
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    real = pq.write_table
    calls = []

    def flaky(tab, where, **kw):  # the second file fails half-way
        calls.append(where)
        if len(calls) == 2:
            Path(where).write_bytes(b"PAR1 partial")
            raise OSError("disk full")
        real(tab, where, **kw)

    monkeypatch.setattr(pq, "write_table", flaky)
    with pytest.raises(OSError, match="disk full"):
        pair_cli(str(s2), str(s1), out=str(out), max_days=30, threads=1, quiet=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old outputs intact, no temp left
    fresh = tmp_path / "fresh"
    calls.clear()
    with pytest.raises(OSError):
        pair_cli(str(s2), str(s1), out=str(fresh), threads=1, quiet=True)
    assert list(fresh.iterdir()) == []


def test_bad_input_is_one_clear_value_error(tmp_path):
    good = tmp_path / "s1.csv"
    good.write_text("id,time,minlon,minlat,maxlon,maxlat\nx,2021-03-01T00:00:00Z,0,0,1,1\n")
    no_time = tmp_path / "no_time.csv"
    no_time.write_text("id,when,minlon,minlat,maxlon,maxlat\na,2021-03-01,0,0,1,1\n")
    with pytest.raises(ValueError, match=r"no_time\.csv: has no 'time' column"):
        pair(str(no_time), str(good))
    bad_time = tmp_path / "bad_time.csv"
    bad_time.write_text(
        "id,time,minlon,minlat,maxlon,maxlat\na,2021-03-01T00:00:00Z,0,0,1,1\nb,next tuesday,0,0,1,1\n"
    )
    with pytest.raises(
        ValueError, match=r"bad_time\.csv: cannot parse time 'next tuesday' in row 1 \(id 'b'\)"
    ):
        pair(str(good), str(bad_time))
    with pytest.raises(ValueError, match=r"missing\.parquet: does not exist"):
        pair(str(tmp_path / "missing.parquet"), str(good))
    bad_wkt = tmp_path / "bad_wkt.csv"
    bad_wkt.write_text('id,time,footprint\na,2021-03-01,"POLYGON ((0 0, 1"\n')
    with pytest.raises(ValueError, match=r"bad_wkt\.csv: cannot parse footprint"):
        pair(str(bad_wkt), str(good))
    no_fp = tmp_path / "no_fp.csv"
    no_fp.write_text("id,time\na,2021-03-01\n")
    with pytest.raises(ValueError, match=r"no_fp\.csv: has no footprint"):
        pair(str(no_fp), str(good))
    dup = tmp_path / "dup.csv"
    dup.write_text("id,time,minlon,minlat,maxlon,maxlat\na,2021-03-01,0,0,1,1\na,2021-03-02,0,0,1,1\n")
    with pytest.raises(ValueError, match=r"dup\.csv: ids are not unique"):
        pair(str(dup), str(good))
    meta = tmp_path / "ssl" / "s2c" / "0001" / "acq"
    meta.mkdir(parents=True)
    (meta / "metadata.json").write_text(json.dumps({"system:footprint": None}))
    with pytest.raises(ValueError, match=r"metadata\.json: has no time"):
        pair(str(tmp_path / "ssl"), str(good))
    with pytest.raises(ValueError, match="min_overlap"):
        pair(str(good), str(good), min_overlap=1.5)
