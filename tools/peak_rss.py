"""Peak resident memory of the current process, for the loader benchmark and memory test."""

from __future__ import annotations

import resource


def peak_rss() -> int:
    """Peak RSS in bytes: VmHWM (reset by exec, unlike ru_maxrss, which a child inherits from
    its parent's size at fork), else ru_maxrss."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
