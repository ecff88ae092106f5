"""The peak-RSS meter of `run`: the most resident memory a notebook's kernel (and whatever it starts) held while it
ran, reported as peak_rss_mb in metrics.json. Introduced in notebook 00.
"""

from __future__ import annotations

import resource
import sys
import threading
from pathlib import Path


class PeakRSS:
    """Peak resident memory (MiB) of this process's children (the kernel and what it starts) while a notebook runs.

    A thread reads each child's high-water mark (VmHWM in /proc/<pid>/status on Linux, current RSS elsewhere)
    every 0.1 s. An exited kernel's peak is also in getrusage(RUSAGE_CHILDREN), which catches a peak in the
    last cell; that counter only ever grows, so it is used only when this run raised it.
    """

    def __init__(self):
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self):
        self._before = _children_maxrss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        after = _children_maxrss_mb()
        if after > self._before:
            self.peak_mb = max(self.peak_mb, after)

    def _poll(self):
        import psutil

        me = psutil.Process()
        while not self._stop.wait(0.1):
            total = 0.0
            for child in me.children(recursive=True):
                try:
                    total += _high_water_mb(child)
                except (psutil.Error, OSError):
                    pass  # it exited between listing and reading
            self.peak_mb = max(self.peak_mb, total)


def _high_water_mb(process) -> float:
    status = Path(f"/proc/{process.pid}/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return process.memory_info().rss / 2**20


def _children_maxrss_mb() -> float:
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, kB on Linux
