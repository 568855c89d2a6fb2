"""A private Mosquitto broker on a free loopback port, for tests and the demo.

Usage: ``with Mosquitto(workdir) as broker: broker.port``. The broker dies with the thread that
started it; ``stop`` is SIGTERM, a bounded wait, then SIGKILL; ``start`` again reuses the port
(so clients can reconnect after a simulated outage).

By default the listener is plain MQTT and anonymous clients are welcome. ``tls=TlsFiles(...)``
makes it MQTT over TLS (and, unless told otherwise, demands a client certificate from the
listener's authority, the certificate's common name becoming the username); ``users={name:
password}`` turns anonymous access off and checks passwords from a hashed password file.
``persistent=True`` keeps sessions and queued messages on disk (saved every ``autosave_s`` seconds,
1 by default; 0: only when the broker exits cleanly) across a restart, as a station's broker would: a
durable subscriber then misses nothing while it is away. What arrived since the last save is lost
when the broker is killed.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edge.serving.tritonserver import die_with_parent, free_port  # one place for process hygiene


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a TLS listener: the authority clients' certificates must chain to, and the broker's own."""

    ca: Path
    cert: Path
    key: Path
    require_certificate: bool = True


class Mosquitto:
    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        tls: TlsFiles | None = None,
        users: Mapping[str, str] | None = None,
        persistent: bool = False,
        autosave_s: int = 1,
    ) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise FileNotFoundError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.binary = binary
        self.port = port or free_port()
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        persistence = (
            ["persistence true", f"persistence_location {workdir}/", f"autosave_interval {autosave_s}"]
            if persistent
            else ["persistence false"]
        )
        lines = [
            f"listener {self.port} 127.0.0.1",
            *persistence,
            "max_inflight_messages 0",
            "max_queued_messages 100000",
            f"log_dest file {self.log_path}",
        ]
        if os.geteuid() == 0:  # as root, mosquitto would become `mosquitto` before opening its log and TLS
            lines.append("user root")  # files, and could read neither in a private test directory
        if tls is not None:
            lines += [f"cafile {tls.ca}", f"certfile {tls.cert}", f"keyfile {tls.key}"]
            if tls.require_certificate:
                lines += ["require_certificate true", "use_identity_as_username true"]
        if users is not None:
            lines.append(f"password_file {self._password_file(users)}")
        anonymous = users is None and (tls is None or not tls.require_certificate)
        lines.append(f"allow_anonymous {'true' if anonymous else 'false'}")
        self.conf.write_text("\n".join(lines) + "\n")
        self._process: subprocess.Popen | None = None

    def _password_file(self, users: Mapping[str, str]) -> Path:
        """Write ``name:password`` lines, then let mosquitto_passwd hash them in place (no password on argv)."""
        tool = shutil.which("mosquitto_passwd")
        if tool is None:
            raise FileNotFoundError("mosquitto_passwd is not installed (Debian: apt-get install mosquitto)")
        path = self.workdir / "passwords"
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text("".join(f"{name}:{password}\n" for name, password in users.items()))
        done = subprocess.run([tool, "-U", str(path)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"mosquitto_passwd -U failed: {done.stderr.strip()}")
        return path

    def start(self, timeout_s: float = 10.0) -> Mosquitto:

        self._process = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=functools.partial(die_with_parent, os.getpid()),
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self._process.returncode}: "
                    f"{self.log_path.read_text() if self.log_path.exists() else ''}"
                )
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
