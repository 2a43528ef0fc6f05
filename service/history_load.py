"""`remi history load`: interaction data into the service's Redis history store.

Without it a Redis-backed service answers ``cold_start`` for every user of the training data.
The loader writes exactly what the service would hold after seeing those events: the last
``max_len`` events per user in time order (equal timestamps keep their file order, as training
does; the rule of :func:`service.history.merge_by_time`, which later appends follow), under the
service's own key scheme (:func:`service.history.history_key`), encoding and
expiry, so the two cannot drift.

Memory stays bounded whatever the file size: pass 1 streams the file in Arrow batches and splits
the rows by a hash of the user into partition files on disk; pass 2 sorts one partition at a time
(every event of a user is in one partition) and writes its users with pipelined, atomic
per-user replacements. Nothing holds the whole file, and never as Python objects.

Semantics: a loaded user's list is **replaced** (one Lua script per user: DEL + LPUSH + EXPIRE,
atomic and single-slot), which makes a re-run idempotent: it leaves the same lists, never doubled
ones. Events such a user received through the API before the load are dropped; users absent from
the file are not touched.

Topologies (:class:`_Writer`): one server and a Sentinel's master take a batch as one pipeline;
on Redis Cluster, where redis-py refuses EVALSHA in a cluster pipeline, a batch is split by the
master that owns each key's slot, one pipeline per master. Writes are at least once: a batch
counts only when its replies are OK and the master's replicas acknowledged it (WAIT), and what a
failover interrupts is sent again (the same replacement) once a master owns the slot, so a load
survives a failover with no lost and no doubled events; past ``retry_s`` it fails, and running
it again finishes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from redis.exceptions import NoScriptError, SlotNotCoveredError

from remi.contract import INTERACTION_COLUMNS
from remi.datafiles import interaction_files, is_parquet_file
from remi.errors import RemiError
from service.history import encode_many, history_key
from service.redis_client import NO_ACCESS, RedisAccess, classify, client_for, node_client, parse_url, public_url

_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64()), ("row", pa.int64())]
)

# KEYS[1]: the user's history; ARGV[1]: ttl seconds (0 = none); ARGV[2..]: events, oldest first.
# The service's lists are newest first (LPUSH), so LPUSH oldest..newest builds the same list.
_REPLACE_LUA = """
redis.call('DEL', KEYS[1])
for i = 2, #ARGV, 1000 do
  redis.call('LPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if tonumber(ARGV[1]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return #ARGV - 1
"""


@dataclass(frozen=True)
class LoadReport:
    users: int
    events: int  # events written (at most max_len per user)
    rows: int  # rows read
    partitions: int
    seconds: float
    events_per_s: float
    capped: int = 0  # rows left out: older than the last max_len events of their user
    max_len: int = 0

    def line(self) -> str:
        return (
            f"loaded {self.users:,} users, {self.events:,} events ({self.rows:,} rows read) in "
            f"{self.seconds:.1f} s: {self.events_per_s:,.0f} events/s; {self.capped:,} rows beyond the last "
            f"{self.max_len:,} events of their user left out"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- progress ---------------------------------------------------------------------------------------

LINE_SECONDS = 10.0  # between two progress lines when stderr is not a terminal


class _ProgressLines:
    """Progress as plain lines on stderr every ``every`` seconds and once at the end: the stand-in
    for a tqdm bar when stderr is a log or `docker logs`, which keep its carriage returns as
    garbage (as `remi train` does, training/progress.py)."""

    def __init__(self, desc: str, unit: str, every: float = LINE_SECONDS):
        self.desc, self.unit, self.every = desc, unit, every
        self.done = 0
        self.started = self.last = time.monotonic()

    def __enter__(self) -> _ProgressLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self._line(time.monotonic())

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self._line(now)

    def _line(self, now: float) -> None:
        self.last = now
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        print(
            f"history load: {self.desc} {self.done:,} {self.unit} ({rate:,.0f} {self.unit}/s, {elapsed:.0f} s)",
            file=sys.stderr,
            flush=True,
        )


def _progress(desc: str, unit: str, show: bool) -> Any:
    """A tqdm bar on a terminal, plain lines otherwise, nothing without ``show``."""
    if show and not sys.stderr.isatty():
        return _ProgressLines(desc, unit)
    from tqdm import tqdm

    return tqdm(desc=desc, unit=f" {unit}", unit_scale=True, disable=not show)


# --- reading ----------------------------------------------------------------------------------------


def _sources(path: Path) -> list[Path]:
    """The files of a CSV(.gz), a Parquet file or a folder of Parquet parts (plain or key=value/), as in training."""
    return list(interaction_files(path).files)


def _is_parquet(path: Path) -> bool:
    return is_parquet_file(path)


def _check_columns(path: Path, names: list[str]) -> None:
    missing = [c for c in INTERACTION_COLUMNS if c not in names]
    if missing:
        raise RemiError(
            f"{path}: missing column(s) {', '.join(missing)}; "
            f"expected {','.join(INTERACTION_COLUMNS)} (found {', '.join(names)})"
        )


def _normalise(path: Path, batch: pa.RecordBatch) -> pa.Table:
    """The three columns as string, string, int64 (Unix seconds); one-line errors for bad values."""
    users, items, stamps = (batch.column(c) for c in INTERACTION_COLUMNS)
    try:
        if pa.types.is_timestamp(stamps.type):
            stamps = pc.cast(stamps.cast(pa.timestamp("s")), pa.int64())
        elif pa.types.is_floating(stamps.type):
            if pc.any(pc.not_equal(pc.floor(stamps), stamps)).as_py():
                raise RemiError(f"{path}: timestamp must be an integer (Unix seconds)")
            stamps = pc.cast(stamps, pa.int64())
        else:
            stamps = pc.cast(stamps, pa.int64())
        users, items = pc.cast(users, pa.string()), pc.cast(items, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise RemiError(
            f"{path}: cannot read the columns as user_id, item_id (text) and timestamp (integer): {exc}"
        ) from exc
    for name, col in (("user_id", users), ("item_id", items), ("timestamp", stamps)):
        if col.null_count:
            raise RemiError(f"{path}: empty {name} in {col.null_count} row(s)")
    for name, col in (("user_id", users), ("item_id", items)):
        if pc.any(pc.equal(pc.utf8_length(col), 0)).as_py():
            raise RemiError(f"{path}: empty {name}")
    return pa.table({"user_id": users, "item_id": items, "timestamp": stamps})


def iter_tables(path: Path, batch_rows: int = 262_144) -> Iterator[pa.Table]:
    """The interactions of a CSV(.gz) file, a Parquet file or a folder of Parquet parts, in file order."""
    for source in _sources(path):
        try:
            if _is_parquet(source):
                parquet = pq.ParquetFile(source)
                _check_columns(source, parquet.schema_arrow.names)
                for batch in parquet.iter_batches(batch_size=batch_rows, columns=list(INTERACTION_COLUMNS)):
                    yield _normalise(source, batch)
                continue
            stream = pa.input_stream(str(source), compression="detect")
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(block_size=16 << 20),
                convert_options=pacsv.ConvertOptions(
                    column_types={"user_id": pa.string(), "item_id": pa.string(), "timestamp": pa.int64()},
                    strings_can_be_null=False,
                ),
            )
            _check_columns(source, reader.schema.names)
            for batch in reader:
                yield _normalise(source, batch.select(list(INTERACTION_COLUMNS)))
        except RemiError:
            raise
        except (pa.ArrowInvalid, OSError, EOFError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RemiError(f"{source}: cannot read ({first})") from exc


def _estimated_rows(path: Path) -> int:
    """A rough row count from the size on disk (compressed ~4x), to size the partitions."""
    total = 0
    for source in _sources(path):
        if _is_parquet(source):
            try:
                total += pq.read_metadata(source).num_rows
            except (pa.ArrowInvalid, OSError) as exc:  # a corrupt or truncated part
                raise RemiError(f"{source}: not a readable Parquet file ({str(exc).splitlines()[0]})") from exc
        else:
            size = source.stat().st_size
            total += size * 4 // 24 if source.suffix == ".gz" else size // 24
    return total


# --- the two passes ---------------------------------------------------------------------------------


def _partition(path: Path, folder: Path, parts: int, batch_rows: int, bar: Any) -> tuple[list[Path], int]:
    """Pass 1: rows to `parts` Arrow files by a hash of the user; a global row number keeps file order."""
    files = [folder / f"part-{i:04d}.arrow" for i in range(parts)]
    writers: list[Any] = [None] * parts
    rows = 0
    try:
        for table in iter_tables(path, batch_rows):
            n = table.num_rows
            table = table.append_column("row", pa.array(np.arange(rows, rows + n, dtype=np.int64)))
            rows += n
            if parts == 1:
                groups = [(0, table)]
            else:
                users = table.column("user_id").to_numpy(zero_copy_only=False)
                part = (pd.util.hash_array(users.astype(object), categorize=False) % parts).astype(np.int64)
                order = np.argsort(part, kind="stable")
                table = table.take(pa.array(order))
                bounds = np.searchsorted(part[order], np.arange(parts + 1))
                groups = [(i, table.slice(bounds[i], bounds[i + 1] - bounds[i])) for i in range(parts)]
            for i, chunk in groups:
                if chunk.num_rows == 0:
                    continue
                if writers[i] is None:
                    writers[i] = pa.ipc.new_file(str(files[i]), _SCHEMA)
                writers[i].write_table(chunk)
            bar.update(n)
    finally:
        for writer in writers:
            if writer is not None:
                writer.close()
    return [f for f, w in zip(files, writers, strict=True) if w is not None], rows


def _last_events(table: pa.Table, max_len: int) -> Iterator[tuple[str, list[str]]]:
    """Per user of one partition: its last `max_len` events, oldest first, encoded as the service does."""
    users = table.column("user_id").to_numpy(zero_copy_only=False)
    codes, uniques = pd.factorize(users)
    stamps = table.column("timestamp").to_numpy()
    order = np.lexsort((table.column("row").to_numpy(), stamps, codes))  # user, time, file order
    codes = codes[order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    ends = np.r_[starts[1:], len(codes)]
    first = np.maximum(starts, ends - max_len)
    keep = np.zeros(len(codes), dtype=bool)
    keep_idx = np.concatenate([np.arange(f, e) for f, e in zip(first.tolist(), ends.tolist(), strict=True)])
    keep[keep_idx] = True
    picked = order[keep]
    encoded = encode_many(table.column("item_id").take(pa.array(picked)).to_numpy(zero_copy_only=False), stamps[picked])
    offsets = np.r_[0, np.cumsum(ends - first)]
    for u, (a, b) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)):
        yield str(uniques[codes[starts[u]]]), encoded[a:b]


def _connect(url: str, timeout_s: float, access: RedisAccess) -> Any:
    """The service's own client factory, with a bad URL turned into the one-line error."""
    try:
        return client_for(url, access, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    except (ValueError, TypeError) as exc:
        raise RemiError(f"bad Redis URL {public_url(url)}: {exc}") from exc


def _redis_failure(exc: BaseException, url: str, what: str) -> RemiError | None:
    """A Redis failure the service classifies (denied, auth, OOM...) as a one-line RemiError;
    None for anything else, which the caller re-raises as the bug it is."""
    failure = classify(exc)
    if failure is None:
        return None
    return RemiError(f"{what} at {public_url(url)} ({failure.reason}: {exc})")


# Failures that a failover or a slot move ends: the batch is sent again (a replacement is idempotent).
_PASSING = {"unreachable", "timeout", "connection_lost", "loading", "master_down", "cluster_down", "try_again",
            "read_only", "moved", "redis_error"}  # fmt: skip


def _passing(exc: BaseException) -> bool:
    if isinstance(exc, NoScriptError):  # a promoted replica without the script: load it, send again
        return True
    failure = classify(exc)
    return failure is not None and failure.reason in _PASSING


@dataclass
class _Group:
    """Users of one batch that go to one master, and how many replicas must hold them."""

    client: Any
    replicas: int
    items: list[tuple[str, list[str]]]


class _Writer:
    """Sends batches of per-user replacements until the masters and their replicas hold them.

    One server or a Sentinel's master: one pipeline of EVALSHA per batch. Redis Cluster: redis-py
    refuses EVALSHA in a cluster pipeline, so the batch is split by the master that owns each
    key's slot (the client's slot map) and each part is one pipeline on a plain connection to
    that master. Every EVALSHA replaces one key, so each is atomic on its own and a part can be
    sent again whole.

    At least once, never doubled: a batch counts as written only when every reply is OK and,
    where the master has replicas, ``WAIT`` says they all hold it (the slot map's replicas, or
    the ones the sentinels see), so a failover cannot promote a replica that lacks an
    acknowledged write. Anything a failover or a slot move ends (a refused or lost connection,
    MOVED, READONLY, CLUSTERDOWN, LOADING, NOSCRIPT, fewer replicas than asked) sends the failed
    users again after the topology is read anew, for up to ``retry_s``; a replacement sent twice
    leaves the same list. Other refusals (OOM, NOPERM, a wrong key type) fail the load.
    """

    def __init__(self, url: str, access: RedisAccess, timeout_s: float, ttl_seconds: int | None, retry_s: float):
        self.url, self.timeout_s, self.ttl, self.retry_s = url, timeout_s, ttl_seconds or 0, retry_s
        self.target = parse_url(url, access)
        self.client = _connect(url, timeout_s, access)
        self.nodes: dict[str, Any] = {}  # cluster: a plain client per master, by host:port
        self.replicas = 0  # one server: none to wait for; a sentinel's master: those the sentinels see
        self.sha = hashlib.sha1(_REPLACE_LUA.encode()).hexdigest()  # what SCRIPT LOAD answers, on every node
        self._refreshing = asyncio.Lock()
        self.problem = ""  # why the last attempt left users to send again

    async def start(self) -> None:
        """Loads the script and reads the topology; a failover under way is left to :meth:`write`."""
        for step in (lambda: self.client.script_load(_REPLACE_LUA), self.refresh):
            try:
                await step()
            except Exception as exc:
                if not _passing(exc):
                    raise

    async def refresh(self) -> None:
        """Reads the topology anew: the slot map, or the replicas the sentinels see."""
        async with self._refreshing:
            if self.target.kind == "cluster":
                await self.client.nodes_manager.initialize()
            elif self.target.kind == "sentinel":
                sentinels = self.client.connection_pool.sentinel_manager
                self.replicas = len(await sentinels.discover_slaves(self.target.service_name))

    def _groups(self, items: list[tuple[str, list[str]]]) -> list[_Group]:
        if self.target.kind != "cluster":
            return [_Group(self.client, self.replicas, items)]
        groups: dict[str, _Group] = {}
        slots = self.client.nodes_manager.slots_cache
        for item in items:
            owners = slots.get(self.client.keyslot(item[0]))  # master first, then its replicas
            if not owners:
                raise SlotNotCoveredError(f"no node owns the slot of {item[0]!r}")
            name = owners[0].name
            if name not in groups:
                if name not in self.nodes:
                    self.nodes[name] = node_client(
                        self.target, owners[0].host, owners[0].port,
                        socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s,
                    )  # fmt: skip
                groups[name] = _Group(self.nodes[name], len(owners) - 1, [])
            groups[name].items.append(item)
        return list(groups.values())

    async def _send(self, group: _Group) -> list[tuple[str, list[str]]]:
        """One pipeline to one master; returns the users to send again."""
        pipe = group.client.pipeline(transaction=False)
        for key, values in group.items:
            pipe.evalsha(self.sha, 1, key, self.ttl, *values)
        if group.replicas:
            pipe.wait(group.replicas, max(1, int(self.timeout_s * 500)))
        replies = await pipe.execute(raise_on_error=False)
        again = []
        for item, reply in zip(group.items, replies, strict=False):
            if isinstance(reply, Exception):
                if not _passing(reply):
                    raise reply
                again.append(item)
                self.problem = repr(reply)
        if any(isinstance(r, NoScriptError) for r in replies):
            await group.client.script_load(_REPLACE_LUA)
        if group.replicas and (isinstance(replies[-1], Exception) or int(replies[-1]) < group.replicas):
            self.problem = f"WAIT: {replies[-1]!r} of {group.replicas} replicas acknowledged"
            return group.items  # not on every replica yet: a failover now could lose them
        return again

    async def _try(self, pending: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
        """One attempt at every user of ``pending``: the ones to send again (``self.problem`` says why)."""
        try:
            groups = self._groups(pending)
        except Exception as exc:  # no slot map yet (the cluster is electing): all of them, later
            if not _passing(exc):
                raise
            self.problem = repr(exc)
            return pending
        failed: list[tuple[str, list[str]]] = []
        results = await asyncio.gather(*map(self._send, groups), return_exceptions=True)
        for group, result in zip(groups, results, strict=True):
            if isinstance(result, BaseException):
                if not _passing(result):
                    raise result
                failed, self.problem = failed + group.items, repr(result)
            else:
                failed += result
        return failed

    async def write(self, items: list[tuple[str, list[str]]]) -> None:
        pending, give_up, pause = items, time.monotonic() + self.retry_s, 0.05
        while pending := await self._try(pending):
            if time.monotonic() > give_up:
                why = f"{len(pending)} users still unwritten after {self.retry_s:g} s of retries"
                raise RemiError(f"Redis failed during the load at {public_url(self.url)} ({why}; last error: "
                                f"{self.problem}); the load is idempotent: run it again")  # fmt: skip
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
            with contextlib.suppress(Exception):  # the cluster may still be electing: the next try reads it again
                await self.refresh()

    async def close(self) -> None:
        for node in self.nodes.values():
            await node.aclose()
        await self.client.aclose()


async def _write(
    url: str,
    files: list[Path],
    *,
    access: RedisAccess,
    prefix: str,
    max_len: int,
    ttl_seconds: int | None,
    batch_events: int,
    in_flight: int,
    timeout_s: float,
    retry_s: float,
    bar: Any,
) -> tuple[int, int]:
    """Pass 2: one partition in memory at a time, users written by pipelined replace scripts."""
    writer = _Writer(url, access, timeout_s, ttl_seconds, retry_s)
    users = events = 0
    try:
        try:
            await writer.start()
        except Exception as exc:
            if (err := _redis_failure(exc, url, "cannot use Redis")) is None:
                raise
            raise err from exc
        slots = asyncio.Semaphore(in_flight)
        tasks: set[asyncio.Task[None]] = set()

        async def send(batch: list[tuple[str, list[str]]]) -> None:
            try:
                await writer.write(batch)
                bar.update(sum(len(v) for _, v in batch))
            finally:
                slots.release()

        async def flush(batch: list[tuple[str, list[str]]]) -> None:
            await slots.acquire()
            task = asyncio.create_task(send(batch))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(0)  # let it put its commands on the wire while we prepare the next batch
            for done in [t for t in tasks if t.done()]:
                done.result()

        for file in files:
            with pa.memory_map(str(file)) as source:
                table = pa.ipc.open_file(source).read_all()
            batch: list[tuple[str, list[str]]] = []
            size = 0
            for user_id, values in _last_events(table, max_len):
                batch.append((history_key(prefix, user_id), values))
                size += len(values)
                users += 1
                events += len(values)
                if size >= batch_events:
                    await flush(batch)
                    batch, size = [], 0
            if batch:
                await flush(batch)
            del table
        if tasks:
            await asyncio.gather(*tasks)
    except RemiError:
        raise
    except Exception as exc:
        if (err := _redis_failure(exc, url, "Redis failed during the load")) is None:
            raise
        raise err from exc
    finally:
        await writer.close()
    return users, events


def load_history(
    data: str | Path,
    redis_url: str,
    *,
    prefix: str,
    max_len: int,
    ttl_seconds: int | None,
    rows_per_partition: int = 2_000_000,
    batch_rows: int = 262_144,
    batch_events: int = 20_000,
    in_flight: int = 4,
    timeout_s: float = 10.0,
    retry_s: float = 60.0,
    progress: bool = False,
    tmp_dir: str | Path | None = None,
    access: RedisAccess = NO_ACCESS,
) -> LoadReport:
    """Replace the Redis history of every user in `data` with their last `max_len` events."""
    if max_len < 1:
        raise RemiError(f"max_len must be >= 1, got {max_len}")

    path = Path(data)
    parts = max(1, math.ceil(_estimated_rows(path) / rows_per_partition))
    t0 = time.perf_counter()

    async def check() -> None:  # fail on a bad URL or an unusable Redis before reading a byte
        client = _connect(redis_url, timeout_s, access)
        try:
            await client.ping()
        except Exception as exc:
            if (err := _redis_failure(exc, redis_url, "cannot use Redis")) is None:
                raise
            raise err from exc
        finally:
            await client.aclose()

    asyncio.run(check())
    with tempfile.TemporaryDirectory(prefix="remi-history-load-", dir=tmp_dir) as folder:
        with _progress("read", "rows", progress) as bar:
            files, rows = _partition(path, Path(folder), parts, batch_rows, bar)
        with _progress("write", "events", progress) as bar:
            users, events = asyncio.run(
                _write(
                    redis_url,
                    files,
                    access=access,
                    prefix=prefix,
                    max_len=max_len,
                    ttl_seconds=ttl_seconds,
                    batch_events=batch_events,
                    in_flight=in_flight,
                    timeout_s=timeout_s,
                    retry_s=retry_s,
                    bar=bar,
                )
            )
    seconds = time.perf_counter() - t0
    rate = round(events / max(seconds, 1e-9), 1)
    # Every row read reaches a partition, so what was not written is what the per-user cap cut.
    return LoadReport(users, events, rows, len(files), round(seconds, 3), rate, capped=rows - events, max_len=max_len)
