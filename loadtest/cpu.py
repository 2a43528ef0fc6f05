"""Who used the CPU during a load test: the server's process tree, the client, Redis, the whole machine.

A rate alone hides where the machine's cores went; the serving benchmark reports CPU per request
next to it. Linux only (reads /proc); every figure is in CPU seconds, so a difference of two
:class:`CpuSnapshot` over the wall time between them is a number of busy cores.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int | str) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (which may hold spaces and parentheses)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(stat_fields(entry)[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = stat_fields(p)
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        todo += children.get(p, [])
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: everything but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU seconds of this process's finished (waited-for) children, e.g. a wrk run."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def redis_pid() -> int | None:
    """The local redis-server's pid (its CPU is reported when Redis runs on this machine)."""
    found = subprocess.run(["pgrep", "-x", "redis-server"], capture_output=True, text=True).stdout.split()
    return int(found[0]) if found else None


def connections_per_process(port: int) -> list[int]:
    """Established client connections held by each server process on ``port`` (largest first), from ss."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True
    ).stdout
    counts: dict[str, int] = {}
    for line in out.splitlines():
        pid = line.partition("pid=")[2].partition(",")[0]
        if pid:
            counts[pid] = counts.get(pid, 0) + 1
    return sorted(counts.values(), reverse=True)


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds used so far by each party of a load test, and a wall clock (``time.perf_counter``)."""

    wall: float
    server: float
    client: float  # this process's finished children: the load generator, once waited for
    redis: float
    machine: float

    def __sub__(self, before: CpuSnapshot) -> CpuSnapshot:
        return CpuSnapshot(
            self.wall - before.wall,
            self.server - before.server,
            self.client - before.client,
            self.redis - before.redis,
            self.machine - before.machine,
        )

    def other(self) -> float:
        """CPU seconds of everything else on the machine (another job disturbing the run), never negative."""
        return max(0.0, self.machine - self.server - self.client - self.redis)


def cpu_snapshot(
    server_cpu: Callable[[], float], redis: int | None, clock: Callable[[], float] = time.perf_counter
) -> CpuSnapshot:
    """Everyone's CPU seconds now; ``server_cpu`` reads the server's (a process tree or this process)."""
    return CpuSnapshot(
        wall=clock(),
        server=server_cpu(),
        client=children_cpu_seconds(),
        redis=tree_cpu_seconds(redis) if redis else 0.0,
        machine=machine_busy_seconds(),
    )
