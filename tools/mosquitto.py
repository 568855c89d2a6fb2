"""A private Mosquitto broker on a free loopback port, for tests and the demo.

Usage: ``with Mosquitto(workdir) as broker: broker.port``. The broker dies with the thread that
started it; ``stop`` is SIGTERM, a bounded wait, then SIGKILL; ``start`` again reuses the port
(so clients can reconnect after a simulated outage).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from edge.tritonserver import die_with_parent, free_port  # one place for process hygiene


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )


class Mosquitto:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise FileNotFoundError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.binary = binary
        self.port = port or free_port()
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            f"max_inflight_messages 0\nmax_queued_messages 100000\nlog_dest file {self.log_path}\n"
        )
        self._process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 10.0) -> Mosquitto:

        self._process = subprocess.Popen(
            [self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=functools.partial(die_with_parent, os.getpid()), start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._process.returncode}: "
                                   f"{self.log_path.read_text() if self.log_path.exists() else ''}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"mosquitto did not listen on {self.port} within {timeout_s} s")

    def stop(self, timeout_s: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL: an abrupt outage (no clean disconnects)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
