"""CPU time and memory of process trees, read from /proc (Linux).

A stack component is a process and all its descendants: PostgreSQL's backends (which
are their own process groups, so groups would miss them), a service's workers. CPU
includes children already reaped (cutime/cstime), so a backend that exits inside the
window is not lost.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stats() -> dict[int, list[str]]:
    """Every process's /proc/<pid>/stat fields after the command name (state first)."""
    out: dict[int, list[str]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                data = f.read()
        except OSError:
            continue
        # The command name (field 2) may hold spaces; everything after its ')' is fixed.
        out[int(pid)] = data[data.rindex(")") + 2 :].split()
    return out


def _trees(stats: dict[int, list[str]], roots: Iterable[int]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)
    trees: dict[int, list[int]] = {}
    for root in roots:
        found, todo = [], [root]
        while todo:
            pid = todo.pop()
            if pid in stats:
                found.append(pid)
                todo.extend(children.get(pid, ()))
        trees[root] = found
    return trees


def cpu_seconds(roots: Iterable[int]) -> dict[int, float]:
    """CPU seconds (user + system, reaped children included) used so far by each tree."""
    stats = _stats()
    return {
        root: sum(sum(int(x) for x in stats[pid][11:15]) for pid in pids) / TICKS
        for root, pids in _trees(stats, roots).items()
    }


def rss_bytes(root: int) -> int:
    """Resident memory of a process and its descendants."""
    stats = _stats()
    return sum(int(stats[pid][21]) * PAGE for pid in _trees(stats, [root])[root])
