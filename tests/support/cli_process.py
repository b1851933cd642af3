"""Run `emma` as a real subprocess and read its output line by line (for CLI and end-to-end tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from queue import Empty, Queue

EMMA = str(Path(sys.executable).with_name("emma"))


def run_emma(*args: str, env: Mapping[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EMMA, *args], env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )


class EmmaProcess:
    """A long-running `emma` subprocess whose stdout+stderr lines are collected in the background."""

    def __init__(
        self, *args: str, env: Mapping[str, str] | None = None, umask: int = -1, cwd: Path | None = None
    ) -> None:
        self.proc = subprocess.Popen(
            [EMMA, *args],
            cwd=cwd,
            env={**os.environ, **(env or {})},
            umask=umask,  # -1: inherit the test's
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._queue: Queue[str] = Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, needle: str, timeout: float = 60) -> str:
        """Return the first line containing `needle`; fail with the whole output if it never comes."""
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if needle in line:
                return line
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.2)
            except Empty:
                if self.proc.poll() is not None and self._queue.empty():
                    break
                continue
            self.lines.append(line)
            if needle in line:
                return line
        raise AssertionError(f"{needle!r} not printed; output so far:\n" + "\n".join(self.lines))

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise
        time.sleep(0.1)
        while not self._queue.empty():
            self.lines.append(self._queue.get())
        return code
