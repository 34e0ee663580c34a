"""Metric storage: the one module that touches metric rows (issue 16 part 7).

Two tiers, like a time-series database's head block and its compacted blocks:

- **Hot**: ``MetricPoint`` rows, one per endpoint, served entity ("" for the endpoint as a whole),
  resolution and interval, with the interval's latency histogram. Only 15 s points (kept
  ``METRICS_HOT_MINUTES[15]``) and 1 min points (``METRICS_HOT_MINUTES[60]``) live here: what
  pollers write into, what downsampling merges histograms from (so 1 min and 1 h percentiles are
  exact up to the histogram's bucket interpolation), and what the recent readers query in SQL
  (alerts, health, exports, the fleet list's sort and sparklines).
- **Cold**: ``MetricChunk`` rows, one per endpoint, resolution and chunk of ``CHUNK_SLOTS``
  intervals, holding every series of the endpoint (each served entity and the endpoint total) as
  float64 columns, byte-shuffled and zlib-compressed. A column identical to one already stored
  (the endpoint total of a single-entity endpoint is its entity's) is stored as a reference, so a
  single-entity endpoint pays for one series. Counts are stored exactly; gauges, latencies and
  percentiles keep 20 mantissa bits (relative error < 1e-6), which makes them compress. Cold rows
  keep percentiles per interval, not histograms: nothing is downsampled from cold data.

A chunk is written once its span has closed (``pack``), from the hot rows, and never touched again
except the 1 h chunks, which gain one slot per closed hour. Readers get ``StoredPoint`` objects
from ``read_points`` and never see either table.
"""

from __future__ import annotations

import json
import math
import struct
import time
import zlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max, Min

from endpoints_app.gateway.metrics import BUCKET_LABELS
from endpoints_app.models import Endpoint, MetricChunk, MetricPoint
from endpoints_app.monitoring import bulk

BASE_RESOLUTION = 15
RESOLUTIONS = (15, 60, 3600)
# Intervals per chunk: 15 min of 15 s points, 1 h of 1 min points, 1 day of 1 h points.
CHUNK_SLOTS = {15: 60, 60: 60, 3600: 24}
# How long after a chunk closed (plus a minute for late polls) ``pack`` looks for it.
PACK_GRACE_SECONDS = 300
# Runs of ``rollup`` that recompute the hour just closed (the hot 1 min points must outlive it).
HOUR_ROLLUP_SECONDS = 600
# Counts are kept exactly; the other columns are rounded to 20 mantissa bits before compression.
EXACT_FIELDS = (
    "request_count",
    "count_4xx",
    "count_5xx",
    "samples",
    "shadow_compared",
    "shadow_agreed",
    "shadow_dropped",
)
ROUNDED_FIELDS = (
    "latency_sum_ms",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "cpu_pct",
    "mem_pct",
    "gpu_pct",
    "replicas",
    "concurrency",
)
FIELDS = EXACT_FIELDS + ROUNDED_FIELDS
NULLABLE = {"p50_ms", "p90_ms", "p99_ms", "cpu_pct", "mem_pct", "gpu_pct", "replicas", "concurrency"}
_FORMAT = 1
_MANTISSA_MASK = np.uint64(~((1 << 32) - 1) & 0xFFFFFFFFFFFFFFFF)  # drop the 32 lowest of 52 bits


@dataclass
class StoredPoint:
    """One interval of one series, as readers see it whichever tier it came from."""

    endpoint_id: str
    served_entity_name: str
    resolution: int
    ts: int
    request_count: float = 0.0
    count_4xx: float = 0.0
    count_5xx: float = 0.0
    latency_sum_ms: float = 0.0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    cpu_pct: float | None = None
    mem_pct: float | None = None
    gpu_pct: float | None = None
    replicas: float | None = None
    concurrency: float | None = None
    samples: float = 1.0
    shadow_compared: float = 0.0
    shadow_agreed: float = 0.0
    shadow_dropped: float = 0.0


_POINT_FIELDS = [f.name for f in fields(StoredPoint)]


def chunk_start(resolution: int, ts: int) -> int:
    span = resolution * CHUNK_SLOTS[resolution]
    return ts // span * span


# --- histogram maths ------------------------------------------------------------------------------


def _upper(label: str) -> float:
    return math.inf if label == "+Inf" else float(label)


_BOUNDS = [(label, _upper(label)) for label in BUCKET_LABELS]  # parsed once, not per quantile
_LAST_FINITE = _upper(BUCKET_LABELS[-2])


def quantile(buckets: dict[str, float], q: float) -> float | None:
    """``histogram_quantile`` over per-bucket (non-cumulative) counts, interpolating linearly."""
    if not buckets:
        return None
    total = sum(buckets.get(label, 0.0) for label in BUCKET_LABELS)
    if total <= 0:
        return None
    rank = q * total
    cumulative = 0.0
    lower = 0.0
    for label, upper in _BOUNDS:
        count = buckets.get(label, 0.0)
        if cumulative + count >= rank and count > 0:
            if upper == math.inf:
                return _LAST_FINITE
            return lower + (upper - lower) * (rank - cumulative) / count
        cumulative += count
        if upper != math.inf:
            lower = upper
    return _LAST_FINITE


def merge_values(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Hot point values of one interval made of several: counts and histogram buckets add up,
    percentiles are recomputed from the merged histogram, gauges average weighted by samples."""
    buckets: dict[str, float] = {}
    for p in points:
        for label, count in (p.get("latency_buckets") or {}).items():
            buckets[label] = buckets.get(label, 0.0) + count

    def weighted(attr: str) -> float | None:
        pairs = [(p[attr], p.get("samples") or 1) for p in points if p.get(attr) is not None]
        weight = sum(w for _, w in pairs)
        return sum(v * w for v, w in pairs) / weight if weight else None

    def total(attr: str) -> float:
        return sum(p.get(attr) or 0.0 for p in points)

    return {
        "request_count": total("request_count"),
        "count_4xx": total("count_4xx"),
        "count_5xx": total("count_5xx"),
        "latency_sum_ms": total("latency_sum_ms"),
        "latency_buckets": buckets,
        "p50_ms": quantile(buckets, 0.5),
        "p90_ms": quantile(buckets, 0.9),
        "p99_ms": quantile(buckets, 0.99),
        "cpu_pct": weighted("cpu_pct"),
        "mem_pct": weighted("mem_pct"),
        "gpu_pct": weighted("gpu_pct"),
        "replicas": weighted("replicas"),
        "concurrency": weighted("concurrency"),
        "samples": sum(p.get("samples") or 1 for p in points),
        "shadow_compared": total("shadow_compared"),
        "shadow_agreed": total("shadow_agreed"),
        "shadow_dropped": total("shadow_dropped"),
    }


# --- the chunk format ------------------------------------------------------------------------------


def encode_chunk(resolution: int, start: int, series: dict[str, dict[int, dict[str, Any]]]) -> bytes:
    """Pack ``{entity: {ts: {field: value}}}`` (one chunk's intervals) into compressed bytes.

    Layout: ``>I`` header length, JSON header (format, slots, series names, fields, references),
    then zlib of the stored columns' float64 values byte-shuffled (all first bytes, then all
    second bytes, …): the exponent and high mantissa bytes of a steady series repeat, and the
    rounded low bytes are zero, so zlib finds long runs.
    """
    slots = CHUNK_SLOTS[resolution]
    names = sorted(series, key=lambda n: (n != "", n))  # "" first: it is what most reads want
    columns: list[np.ndarray] = []
    refs: dict[str, int] = {}  # "series_index,field_index" -> index of an identical stored column
    seen: dict[bytes, int] = {}
    for si, name in enumerate(names):
        points = series[name]
        for fi, fname in enumerate(FIELDS):
            column = np.full(slots, np.nan, dtype=np.float64)
            for ts, values in points.items():
                value = values.get(fname)
                if value is not None:
                    column[(ts - start) // resolution] = value
            if fname in ROUNDED_FIELDS:
                bits = column.view(np.uint64) & _MANTISSA_MASK
                column = bits.view(np.float64)
            key = column.tobytes()
            if key in seen:
                refs[f"{si},{fi}"] = seen[key]
                continue
            seen[key] = len(columns)
            columns.append(column)
    # Which slots hold an interval at all, per series (a column of NaN can mean "no value").
    present = [sorted((ts - start) // resolution for ts in series[name]) for name in names]
    header = json.dumps(
        {"v": _FORMAT, "slots": slots, "series": names, "fields": list(FIELDS), "refs": refs, "present": present},
        separators=(",", ":"),
    ).encode()
    stacked = np.concatenate(columns) if columns else np.zeros(0, dtype=np.float64)
    shuffled = stacked.view(np.uint8).reshape(-1, 8).T.tobytes()
    return struct.pack(">I", len(header)) + zlib.compress(header + shuffled, 9)


def decode_chunk(
    data: bytes, resolution: int, start: int, *, only: str | None = None
) -> dict[str, dict[int, dict[str, float | None]]]:
    """The inverse of ``encode_chunk``: ``{entity: {ts: {field: value}}}``, missing values None.

    ``only`` decodes one series (the others are skipped, not materialised).
    """
    (header_len,) = struct.unpack(">I", data[:4])
    raw = zlib.decompress(data[4:])
    header = json.loads(raw[:header_len])
    slots, names, field_names = header["slots"], header["series"], header["fields"]
    body = np.frombuffer(raw[header_len:], dtype=np.uint8)
    count = len(body) // 8
    stacked = body.reshape(8, count).T.copy().view(np.float64).reshape(-1).tolist() if count else []
    refs = header["refs"]
    out: dict[str, dict[int, dict[str, float | None]]] = {}
    next_column = 0
    for si, name in enumerate(names):
        columns: list[int] = []  # each field's stored column
        for fi in range(len(field_names)):
            ref = refs.get(f"{si},{fi}")
            if ref is None:
                columns.append(next_column)
                next_column += 1
            else:
                columns.append(ref)
        if only is not None and name != only:
            continue
        points: dict[int, dict[str, float | None]] = {}
        for slot in header["present"][si]:
            row = {}
            for fname, column in zip(field_names, columns, strict=True):
                v = stacked[column * slots + slot]
                row[fname] = v if v == v else None  # NaN is a missing value
            points[start + slot * resolution] = row
        out[name] = points
    return out


def _point_values(point: MetricPoint | StoredPoint) -> dict[str, Any]:
    return {f: getattr(point, f) for f in FIELDS}


# --- writing ---------------------------------------------------------------------------------------


def write_point(endpoint_id: str, entity: str, resolution: int, ts: int, values: dict[str, Any]) -> None:
    """Add one interval's values into the hot point at (entity, resolution, ts), creating it.

    ``values`` holds ``MetricPoint`` field values (counts, ``latency_buckets``, gauges); an existing
    point is merged with them (counts and buckets add up, gauges average by samples).
    """
    for _attempt in range(2):
        point = (
            MetricPoint.objects.select_for_update()
            .filter(endpoint_id=endpoint_id, served_entity_name=entity, resolution=resolution, ts=ts)
            .first()
        )
        if point is None:
            try:
                with transaction.atomic():
                    MetricPoint.objects.create(
                        endpoint_id=endpoint_id, served_entity_name=entity, resolution=resolution, ts=ts, **values
                    )
                return
            except IntegrityError:
                continue  # another poll created it first: merge into it
        merged = merge_values([_hot_values(point), values])
        for key, value in merged.items():
            setattr(point, key, value)
        point.save()
        return


def write_points(points: list[tuple[str, str, int, int, dict[str, Any]]]) -> None:
    """``write_point`` for many intervals ``(endpoint_id, entity, resolution, ts, values)`` at once:
    one query finds the points that exist (merged one by one, rare: two polls in one interval),
    the others are inserted in bulk. Call it inside a transaction."""
    if not points:
        return
    keys = {(eid, entity, res, ts) for eid, entity, res, ts, _ in points}
    existing = set(
        MetricPoint.objects.filter(
            endpoint_id__in={k[0] for k in keys},
            resolution__in={k[2] for k in keys},
            ts__in={k[3] for k in keys},
        ).values_list("endpoint_id", "served_entity_name", "resolution", "ts")
    )
    fresh = [p for p in points if (p[0], p[1], p[2], p[3]) not in existing]
    try:
        with transaction.atomic():
            _insert_hot(fresh)
    except IntegrityError:  # another poll wrote one of them meanwhile, or an endpoint was deleted
        alive = set(Endpoint.fleet.filter(id__in={p[0] for p in points}).values_list("id", flat=True))
        points = [p for p in points if p[0] in alive]  # a deleted endpoint's points go with it
        existing = set()
        fresh = []
    fresh_keys = {(p[0], p[1], p[2], p[3]) for p in fresh}
    for eid, entity, res, ts, values in points:
        if (eid, entity, res, ts) not in fresh_keys:
            write_point(eid, entity, res, ts, values)


_HOT_COLUMNS = ("endpoint_id", "served_entity_name", "resolution", "ts", *FIELDS, "latency_buckets")


def _insert_hot(rows: list[tuple[str, str, int, int, dict[str, Any]]]) -> None:
    """Insert hot points without a model instance per point (the ORM's ``bulk_create`` was most
    of a metrics sweep's CPU): ``bulk.insert_rows``, a COPY on PostgreSQL."""
    bulk.insert_rows(
        MetricPoint._meta.db_table,
        _HOT_COLUMNS,
        [
            [
                eid,
                entity,
                res,
                ts,
                *(values.get(f, _DEFAULTS.get(f)) for f in FIELDS),
                json.dumps(values.get("latency_buckets") or {}),
            ]
            for eid, entity, res, ts, values in rows
        ],
    )


_DEFAULTS: dict[str, Any] = {f: 0.0 for f in EXACT_FIELDS} | {"latency_sum_ms": 0.0, "samples": 1}


def _hot_values(point: MetricPoint) -> dict[str, Any]:
    values = _point_values(point)
    values["latency_buckets"] = point.latency_buckets or {}
    return values


def write_chunk_points(points: Iterable[StoredPoint]) -> int:
    """Write finished intervals straight into cold chunks (tests, benchmarks, the data migration).

    Points are grouped by (endpoint, resolution, chunk); each chunk is read, the points set into
    their slots (replacing what was there) and written back. Returns chunks written.
    """
    groups: dict[tuple[str, int, int], list[StoredPoint]] = defaultdict(list)
    for p in points:
        groups[(p.endpoint_id, p.resolution, chunk_start(p.resolution, p.ts))].append(p)
    return _merge_into_chunks(
        {key: {(p.served_entity_name, p.ts): _point_values(p) for p in ps} for key, ps in groups.items()}
    )


def _merge_into_chunks(updates: dict[tuple[str, int, int], dict[tuple[str, int], dict[str, Any]]]) -> int:
    if not updates:
        return 0
    keys = list(updates)
    with transaction.atomic():
        existing: dict[tuple[str, int, int], MetricChunk] = {}
        by_res: dict[int, set[int]] = defaultdict(set)
        for _eid, res, start in keys:
            by_res[res].add(start)
        eids = {k[0] for k in keys}
        for res, starts in by_res.items():
            for chunk in MetricChunk.objects.select_for_update().filter(
                endpoint_id__in=eids, resolution=res, start__in=starts
            ):
                existing[(chunk.endpoint_id, chunk.resolution, chunk.start)] = chunk
        to_create: list[MetricChunk] = []
        to_update: list[MetricChunk] = []
        for key in keys:
            eid, res, start = key
            found = existing.get(key)
            series = decode_chunk(bytes(found.data), res, start) if found is not None else {}
            for (entity, ts), values in updates[key].items():
                series.setdefault(entity, {})[ts] = values
            data = encode_chunk(res, start, series)
            if found is None:
                to_create.append(MetricChunk(endpoint_id=eid, resolution=res, start=start, data=data))
            else:
                found.data = data
                to_update.append(found)
        MetricChunk.objects.bulk_create(to_create, batch_size=500)
        MetricChunk.objects.bulk_update(to_update, ["data"], batch_size=500)
    return len(keys)


# --- reading ---------------------------------------------------------------------------------------


def read_points(
    endpoint_id: str, *, resolution: int, start: int, end: int, entity: str | None = ""
) -> list[StoredPoint]:
    """Intervals of one endpoint at one resolution with ``start <= ts < end``, oldest first.

    ``entity`` "" is the endpoint as a whole, a name one served entity, None every series. Cold
    and hot data are merged, the hot point winning where both hold one. At 1 h resolution the
    hours not yet packed (the current one) are merged from the hot 1 min points.
    """
    found: dict[tuple[str, int], StoredPoint] = {}
    first_chunk = chunk_start(resolution, start)
    for chunk in MetricChunk.objects.filter(
        endpoint_id=endpoint_id, resolution=resolution, start__gte=first_chunk, start__lt=end
    ).order_by("start"):
        for name, points in decode_chunk(bytes(chunk.data), resolution, chunk.start, only=entity).items():
            for ts, values in points.items():
                if start <= ts < end:
                    found[(name, ts)] = _stored(endpoint_id, name, resolution, ts, values)
    hot = MetricPoint.objects.filter(endpoint_id=endpoint_id, resolution=resolution, ts__gte=start, ts__lt=end)
    if entity is not None:
        hot = hot.filter(served_entity_name=entity)
    for row in hot.values_list("served_entity_name", "ts", *FIELDS):
        name, ts, *values = row
        found[(name, ts)] = _stored(endpoint_id, name, resolution, ts, dict(zip(FIELDS, values, strict=True)))
    if resolution == 3600:
        for point in _hours_from_hot(endpoint_id, start=start, end=end, entity=entity):
            found.setdefault((point.served_entity_name, point.ts), point)
    return sorted(found.values(), key=lambda p: (p.ts, p.served_entity_name))


def read_columns(
    endpoint_id: str, *, resolution: int, start: int, end: int, entity: str = ""
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``read_points`` for one series as arrays (what charts aggregate): the interval starts,
    sorted, and each field's values (NaN where missing), without a Python object per interval."""
    parts_ts: list[np.ndarray] = []
    parts: dict[str, list[np.ndarray]] = {f: [] for f in FIELDS}
    for data, chunk_start_ts in MetricChunk.objects.filter(
        endpoint_id=endpoint_id, resolution=resolution, start__gte=chunk_start(resolution, start), start__lt=end
    ).values_list("data", "start"):
        ts, columns = _decode_series_arrays(bytes(data), resolution, chunk_start_ts, entity)
        parts_ts.append(ts)
        for f in FIELDS:
            parts[f].append(columns[f])
    hot = list(
        MetricPoint.objects.filter(
            endpoint_id=endpoint_id, served_entity_name=entity, resolution=resolution, ts__gte=start, ts__lt=end
        ).values_list("ts", *FIELDS)
    )
    extra = _hours_from_hot(endpoint_id, start=start, end=end, entity=entity) if resolution == 3600 else []
    rows = [(p.ts, *(getattr(p, f) for f in FIELDS)) for p in extra] + hot  # hot points last: they win
    if rows:
        table = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=np.float64)
        parts_ts.append(table[:, 0].astype(np.int64))
        for i, f in enumerate(FIELDS):
            parts[f].append(table[:, i + 1])
    if not parts_ts:
        return np.zeros(0, dtype=np.int64), {f: np.zeros(0) for f in FIELDS}
    ts_all = np.concatenate(parts_ts)
    # The last occurrence of each interval wins (hot after cold); keep those within the range.
    order = np.arange(len(ts_all))[::-1]
    _, first_in_reversed = np.unique(ts_all[::-1], return_index=True)
    keep = order[first_in_reversed]
    keep = keep[(ts_all[keep] >= start) & (ts_all[keep] < end)]
    keep = keep[np.argsort(ts_all[keep], kind="stable")]
    return ts_all[keep], {f: np.concatenate(parts[f])[keep] for f in FIELDS}


def _decode_series_arrays(
    data: bytes, resolution: int, start: int, entity: str
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    (header_len,) = struct.unpack(">I", data[:4])
    raw = zlib.decompress(data[4:])
    header = json.loads(raw[:header_len])
    slots, names, field_names = header["slots"], header["series"], header["fields"]
    if entity not in names:
        return np.zeros(0, dtype=np.int64), {f: np.zeros(0) for f in FIELDS}
    body = np.frombuffer(raw[header_len:], dtype=np.uint8)
    count = len(body) // 8
    stacked = body.reshape(8, count).T.copy().view(np.float64).reshape(-1, slots)
    refs = header["refs"]
    target = names.index(entity)
    next_column = 0
    columns: dict[str, np.ndarray] = {}
    present = np.array(header["present"][target], dtype=np.int64)
    for si in range(target + 1):
        for fi, fname in enumerate(field_names):
            ref = refs.get(f"{si},{fi}")
            column = ref if ref is not None else next_column
            if ref is None:
                next_column += 1
            if si == target:
                columns[fname] = stacked[column][present]
    return start + present * resolution, {f: columns.get(f, np.full(len(present), np.nan)) for f in FIELDS}


def _stored(endpoint_id: str, name: str, resolution: int, ts: int, values: dict[str, Any]) -> StoredPoint:
    clean = {k: v for k, v in values.items() if k in FIELDS and (v is not None or k in NULLABLE)}
    return StoredPoint(endpoint_id=endpoint_id, served_entity_name=name, resolution=resolution, ts=ts, **clean)


def _hours_from_hot(endpoint_id: str, *, start: int, end: int, entity: str | None) -> list[StoredPoint]:
    rows = MetricPoint.objects.filter(endpoint_id=endpoint_id, resolution=60, ts__gte=start, ts__lt=end)
    if entity is not None:
        rows = rows.filter(served_entity_name=entity)
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for point in rows:
        groups[(point.served_entity_name, point.ts // 3600 * 3600)].append(_hot_values(point))
    return [_stored(endpoint_id, name, 3600, ts, merge_values(values)) for (name, ts), values in groups.items()]


# --- downsampling, packing and retention -------------------------------------------------------------


def rollup(now: float | None = None) -> int:
    """Downsample and pack; idempotent, run every minute by beat. Returns rows written.

    1. 1 min hot points are merged from the 15 s ones (histograms merged), incrementally: only the
       minutes that closed ``ROLLUP_GRACE_SECONDS`` ago (polls that started in them have written)
       and are not rolled up yet, newer than the last minute that has 1 min points; at most the
       last ``ROLLUP_LOOKBACK_SECONDS`` (a rollup missed for longer catches up that far).
    2. The hour that closed becomes a 1 h slot of its endpoint's 1 h chunk, merged from the hot
       1 min points (so its percentiles come from the merged histogram); recomputed by each run
       in the first ``HOUR_ROLLUP_SECONDS`` after the hour (late polls, a missed run), not after.
    3. 15 s and 1 min chunks whose span closed (a minute of grace for late polls) are packed from
       the hot points, once.
    """
    now = now if now is not None else time.time()
    written = _rollup_minutes(now)
    closed = int(now) // 3600 * 3600
    if 60 <= now - closed < HOUR_ROLLUP_SECONDS:
        written += _rollup_hours(start=closed - 3600, end=closed)
    written += pack(now)
    return written


# A minute is rolled up once it closed this long ago: a poll writes into the 15 s interval it
# started in, within its HTTP timeout and a batch's writes.
ROLLUP_GRACE_SECONDS = 30
ROLLUP_LOOKBACK_SECONDS = 10 * 60


def _rollup_minutes(now: float) -> int:
    """The minutes not rolled up yet (``rollup`` step 1)."""
    end = int(now - ROLLUP_GRACE_SECONDS) // 60 * 60
    start = int(now - ROLLUP_LOOKBACK_SECONDS) // 60 * 60
    # metric_point_prune_idx (resolution, ts) answers this from the index.
    done = MetricPoint.objects.filter(resolution=60, ts__gte=start, ts__lt=end).aggregate(last=Max("ts"))["last"]
    if done is not None:
        start = done + 60
    return _rollup_hot(15, 60, start=start, end=end)


def _rollup_hot(source: int, target: int, *, start: int, end: int) -> int:
    """Recompute the ``target`` points of [start, end) from the ``source`` ones (replacing them)."""
    if end <= start:
        return 0
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    rows = (
        MetricPoint.objects.filter(resolution=source, ts__gte=start, ts__lt=end)
        .order_by()
        .values_list("endpoint_id", "served_entity_name", "ts", "latency_buckets", *FIELDS)
    )
    for eid, entity, ts, buckets, *values in rows.iterator(chunk_size=5000):
        point = dict(zip(FIELDS, values, strict=True))
        point["latency_buckets"] = buckets or {}
        groups[(eid, entity, ts // target * target)].append(point)
    merged = [(eid, entity, target, ts, merge_values(values)) for (eid, entity, ts), values in groups.items()]
    with transaction.atomic():
        MetricPoint.objects.filter(resolution=target, ts__gte=start, ts__lt=end).delete()
        _insert_hot(merged)
    return len(merged)


def _rollup_hours(*, start: int, end: int) -> int:
    if end <= start:
        return 0
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for point in MetricPoint.objects.filter(resolution=60, ts__gte=start, ts__lt=end).iterator(chunk_size=2000):
        groups[(point.endpoint_id, point.served_entity_name, point.ts // 3600 * 3600)].append(_hot_values(point))
    updates: dict[tuple[str, int, int], dict[tuple[str, int], dict[str, Any]]] = defaultdict(dict)
    for (eid, entity, ts), values in groups.items():
        merged = merge_values(values)
        merged.pop("latency_buckets", None)
        updates[(eid, 3600, chunk_start(3600, ts))][(entity, ts)] = merged
    return _merge_into_chunks(updates)


def pack(now: float | None = None, *, since: float | None = None) -> int:
    """Pack closed 15 s and 1 min chunks from hot points into cold chunks (those not packed yet).

    By default only the chunk that closed last, in the ``PACK_GRACE_SECONDS`` after it closed
    (beat runs this every minute); ``since`` packs every closed chunk from then on. ``prune``
    packs what is left before it deletes hot points, so a chunk whose minutes passed while beat
    or the worker was down is packed late, not lost.
    """
    now = now if now is not None else time.time()
    written = 0
    for resolution in (15, 60):
        span = resolution * CHUNK_SLOTS[resolution]
        sealed_before = int(now - 60) // span * span  # chunks starting before this have closed
        if since is None:
            # Only in the first minutes after a chunk closed, and only that chunk: the scan of
            # the hot rows is the cost, and the chunk is packed by the first of these runs.
            if now - 60 - sealed_before >= PACK_GRACE_SECONDS:
                continue
            lower = sealed_before - span
        else:
            lower = int(since) // span * span
        written += _pack_range(resolution, lower, sealed_before)
    return written


def _pack_range(resolution: int, lower: int, upper: int) -> int:
    """Pack the chunks of ``resolution`` starting in [lower, upper) that hold hot points and are
    not packed yet."""
    span = resolution * CHUNK_SLOTS[resolution]
    if upper <= lower:
        return 0
    written = 0
    rows = MetricPoint.objects.filter(resolution=resolution, ts__gte=lower, ts__lt=upper)
    keys = {
        (eid, ts // span * span)
        for eid, ts in rows.values_list("endpoint_id", "ts").distinct().iterator(chunk_size=5000)
    }
    packed = set(
        MetricChunk.objects.filter(resolution=resolution, start__gte=lower, start__lt=upper).values_list(
            "endpoint_id", "start"
        )
    )
    todo = sorted(keys - packed)
    for i in range(0, len(todo), 500):
        batch = todo[i : i + 500]
        eids = {eid for eid, _ in batch}
        starts = {s for _, s in batch}
        wanted = set(batch)
        updates: dict[tuple[str, int, int], dict[tuple[str, int], dict[str, Any]]] = defaultdict(dict)
        values_rows = MetricPoint.objects.filter(
            resolution=resolution, endpoint_id__in=eids, ts__gte=min(starts), ts__lt=max(starts) + span
        ).values_list("endpoint_id", "served_entity_name", "ts", *FIELDS)
        for eid, entity, ts, *values in values_rows:
            start = ts // span * span
            if (eid, start) in wanted:
                updates[(eid, resolution, start)][(entity, ts)] = dict(zip(FIELDS, values, strict=True))
        written += _merge_into_chunks(updates)
    return written


def prune(now: float | None = None) -> int:
    """Apply retention: hot points past the hot window, chunks whose whole span is past retention."""
    now = now if now is not None else time.time()
    deleted = 0
    for resolution, minutes in settings.METRICS_HOT_MINUTES.items():
        cutoff = int(now - minutes * 60)
        expiring = MetricPoint.objects.filter(resolution=resolution, ts__lt=cutoff)
        if resolution in CHUNK_SLOTS:
            # Pack first what pack() has not (its minutes after a chunk closed were missed): the
            # closed chunks that hold points about to go.
            oldest = expiring.aggregate(oldest=Min("ts"))["oldest"]
            span = resolution * CHUNK_SLOTS[resolution]
            sealed_before = int(now - 60) // span * span
            if oldest is not None:
                _pack_range(resolution, oldest // span * span, min(sealed_before, (cutoff // span + 1) * span))
        count, _ = expiring.delete()
        deleted += count
    deleted += MetricPoint.objects.exclude(resolution__in=list(settings.METRICS_HOT_MINUTES)).delete()[0]
    for resolution, hours in settings.METRICS_RETENTION_HOURS.items():
        span = resolution * CHUNK_SLOTS[resolution]
        count, _ = MetricChunk.objects.filter(resolution=resolution, start__lt=int(now - hours * 3600) - span).delete()
        deleted += count
    return deleted
