"""Run a real `tritonserver` process: the binary shipped in the `nvidia-pytriton` wheel, or any other.

Pure part: `TritonServerSettings` turns values into a command line and an environment.
I/O part: `locate_wheel_server` finds the wheel's server, `assemble_backend_dir` lays out a backend
directory with the Python backend and the stub for the running interpreter, `TritonServer` supervises
the process (child dies with its parent, readiness against a deadline, TERM then KILL), and
`serve_forever` / `add_arguments` / `main` make the `edge-inspect triton-server` subcommand.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import functools
import http.client
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Literal

from edge.errors import TritonServerError, TritonServerExited, TritonServerTimeout

ModelControl = Literal["none", "explicit"]

STUB_NAME = "triton_python_backend_stub"
READY_POLL_INTERVAL_S = 0.2
READY_REQUEST_TIMEOUT_S = 1.0
LOG_TAIL_LINES = 40
LOG_TAIL_BYTES = 64 * 1024
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here, not in the forked child


@dataclasses.dataclass(frozen=True)
class TritonServerSettings:
    """Everything one `tritonserver` run needs, as values. `command` and `environment` do no I/O."""

    model_repository: Path
    grpc_port: int
    http_port: int
    metrics_port: int
    backend_dir: Path
    model_control: ModelControl = "none"
    load_models: tuple[str, ...] = ("*",)  # loaded at start in explicit mode ("*" = all)
    log_verbose: int = 0
    address: str = "127.0.0.1"  # listen address of the HTTP, gRPC and metrics endpoints
    exit_timeout_s: int = 10  # how long Triton drains in-flight requests on SIGTERM
    gpu: bool = False  # False: no GPU metrics (DCGM) and no pinned memory pool, so no CUDA noise on CPU hosts
    binary: Path = Path("tritonserver")
    library_dirs: tuple[Path, ...] = ()  # prepended to LD_LIBRARY_PATH
    python_bin_dir: Path | None = None  # prepended to PATH: Python-backend models run on its python3
    extra_args: tuple[str, ...] = ()

    def command(self) -> list[str]:
        """The `tritonserver` command line."""
        args = [
            str(self.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.backend_dir}",
            f"--model-control-mode={self.model_control}",
            f"--http-address={self.address}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.address}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.address}",
            f"--metrics-port={self.metrics_port}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--log-verbose={self.log_verbose}",
            "--strict-readiness=true",
            "--exit-on-error=true",
        ]
        if not self.gpu:
            args += ["--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0"]
        if self.model_control == "explicit":
            args += [f"--load-model={name}" for name in self.load_models]
        return args + list(self.extra_args)

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """`base` with the server's library directories and the Python `bin` directory prepended."""
        env = dict(base)
        if self.library_dirs:
            env["LD_LIBRARY_PATH"] = _prepend(self.library_dirs, base.get("LD_LIBRARY_PATH", ""))
        if self.python_bin_dir is not None:
            env["PATH"] = _prepend((self.python_bin_dir,), base.get("PATH", os.defpath))
        return env


def _prepend(dirs: Sequence[Path], current: str) -> str:
    return os.pathsep.join([str(d) for d in dirs] + [p for p in current.split(os.pathsep) if p])


@dataclasses.dataclass(frozen=True)
class ServerDist:
    """The pieces of a `tritonserver` installation and of this interpreter that the server needs."""

    binary: Path
    python_backend_dir: Path  # holds libtriton_python.so and triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub built for the running Python version
    library_dirs: tuple[Path, ...]  # interpreter's shared libpython dir first, then the wheel's bundled libs


def locate_wheel_server() -> ServerDist:
    """Find the `tritonserver` shipped in the installed `nvidia-pytriton` wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise TritonServerError("the nvidia-pytriton package is not installed: pip install nvidia-pytriton")
    package = Path(spec.origin).parent
    dist_dir = package / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    dist = ServerDist(
        binary=dist_dir / "bin" / "tritonserver",
        python_backend_dir=dist_dir / "backends" / "python",
        stub=dist_dir / "python_backend_stubs" / version / STUB_NAME,
        library_dirs=(*_shared_libpython_dir(), package.parent / "nvidia_pytriton.libs"),
    )
    for path in (dist.binary, dist.python_backend_dir / "libtriton_python.so", dist.stub, dist.library_dirs[-1]):
        if not path.exists():
            raise TritonServerError(f"incomplete nvidia-pytriton install (Python {version}): {path} is missing")
    return dist


def _shared_libpython_dir() -> tuple[Path, ...]:
    """The directory of this interpreter's shared libpython, so the stub embeds the same Python build."""
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).exists():
        return (Path(libdir),)
    return ()  # static build: the stub falls back to the system's libpython of the same version


def assemble_backend_dir(dest: Path, dist: ServerDist | None = None) -> Path:
    """Lay out `dest/python/` with the Python backend and the stub for the running Python; idempotent."""
    dist = dist or locate_wheel_server()
    python_dir = dest / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    sources = [p for p in dist.python_backend_dir.iterdir() if p.is_file()] + [dist.stub]
    for source in sources:
        _copy_if_changed(source, python_dir / source.name)
    return dest


def _copy_if_changed(source: Path, target: Path) -> None:
    """Copy with metadata unless `target` already has the same size and mtime; atomic replace."""
    stat = source.stat()
    if target.exists() and (target.stat().st_size, target.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns):
        return
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    shutil.copy2(source, partial)
    os.replace(partial, target)


def wheel_settings(
    model_repository: Path, grpc_port: int, http_port: int, metrics_port: int, backend_dir: Path
) -> TritonServerSettings:
    """Settings for the wheel's server, assembling `backend_dir` on the way (`dataclasses.replace` for more)."""
    dist = locate_wheel_server()
    return TritonServerSettings(
        model_repository=model_repository.resolve(),
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        backend_dir=assemble_backend_dir(backend_dir, dist).resolve(),
        binary=dist.binary,
        library_dirs=dist.library_dirs,
        python_bin_dir=Path(sys.executable).parent,
    )


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 now (another process may still take one before use)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def free_port() -> int:
    """One TCP port free on 127.0.0.1 now."""
    return free_ports(1)[0]


def die_with_parent(parent_pid: int) -> None:
    """preexec_fn: the kernel sends SIGTERM to the child when the thread that started it exits."""
    if _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


class TritonServer:
    """One supervised `tritonserver` process in its own process group.

    The child gets SIGTERM when the thread that called `start` exits (PR_SET_PDEATHSIG), so start it
    from a long-lived thread. `log_path=None` leaves the child on this process's stdout/stderr.
    As a context manager it starts the server, waits until ready, and stops it on exit.
    """

    def __init__(self, settings: TritonServerSettings, log_path: Path | None, ready_timeout_s: float = 120.0):
        self.settings = settings
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """Process id of the server (also its process group id), None before `start`."""
        return self._process.pid if self._process else None

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP endpoint, as seen from this host."""
        return f"http://{_client_host(self.settings.address)}:{self.settings.http_port}"

    @property
    def grpc_url(self) -> str:
        """host:port of the gRPC endpoint, as seen from this host."""
        return f"{_client_host(self.settings.address)}:{self.settings.grpc_port}"

    def start(self) -> None:
        """Start the process; raise `TritonServerError` if it is already running or cannot be executed."""
        if self._process is not None and self._process.poll() is None:
            raise TritonServerError(f"tritonserver already running (pid {self._process.pid})")
        log: IO[bytes] | None = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                self.settings.command(),
                env=self.settings.environment(os.environ),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT if log else None,
                start_new_session=True,
                preexec_fn=functools.partial(die_with_parent, os.getpid()),
            )
        except OSError as exc:
            raise TritonServerError(f"cannot start {self.settings.binary}: {exc}") from exc
        finally:
            if log is not None:
                log.close()

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Poll `/v2/health/ready` until 200; `TritonServerExited` if the process ends, else `TritonServerTimeout`."""
        process = self._require_started()
        deadline = time.monotonic() + (self.ready_timeout_s if timeout_s is None else timeout_s)
        url = f"{self.http_url}/v2/health/ready"
        while True:
            if process.poll() is not None:
                raise TritonServerExited(
                    f"tritonserver exited with code {process.returncode} before it was ready\n{self.log_tail()}"
                )
            if _http_ok(url):
                return
            if time.monotonic() >= deadline:
                raise TritonServerTimeout(f"tritonserver not ready at {url} before the deadline\n{self.log_tail()}")
            time.sleep(READY_POLL_INTERVAL_S)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, wait up to `timeout_s`, then SIGKILL the process group; return the exit code."""
        if self._process is None:
            return None
        process = self._process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(process.pid)
                process.wait()
        _kill_group(process.pid)  # stubs the server left behind
        return process.returncode

    def wait(self) -> int:
        """Block until the process exits; return its exit code."""
        return self._require_started().wait()

    def send_signal(self, signum: int) -> None:
        """Send `signum` to the server process if it is running (no-op otherwise)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signum)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the server log, or a note when there is no log file."""
        if self.log_path is None or not self.log_path.exists():
            return "(no tritonserver log file)"
        with self.log_path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            text = log.read().decode(errors="replace").splitlines()[-lines:]
        return "\n".join([f"--- last {len(text)} lines of {self.log_path} ---", *text])

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _require_started(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise TritonServerError("tritonserver was not started")
        return self._process


def _client_host(address: str) -> str:
    return "127.0.0.1" if address in ("0.0.0.0", "") else address


def _http_ok(url: str) -> bool:
    """True on HTTP 200; False on refused connections, timeouts and non-200 answers (all transient)."""
    try:
        with urllib.request.urlopen(url, timeout=READY_REQUEST_TIMEOUT_S) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError):
        return False


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone


def serve_forever(settings: TritonServerSettings, log_path: Path | None = None) -> int:
    """Run the server in the foreground, forwarding SIGTERM/SIGINT to it; return a shell-style exit code."""
    server = TritonServer(settings, log_path)

    def forward(signum: int, _frame: FrameType | None) -> None:
        server.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        code = server.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
    return 128 - code if code < 0 else code


def default_backend_dir() -> Path:
    """Per-user cache folder for the assembled backend directory."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "edge-inspect" / "triton-backends"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `edge-inspect triton-server`."""
    parser.add_argument("--repository", type=Path, required=True, help="model repository to serve")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001)")
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (default 8002)")
    parser.add_argument("--address", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--model-control", choices=("none", "explicit"), default="none", help="Triton model control")
    parser.add_argument("--backend-dir", type=Path, default=None, help="assembled backend directory (default: cache)")
    parser.add_argument("--log-verbose", type=int, default=0, help="Triton verbose log level")


def main(args: argparse.Namespace) -> int:
    """Entry point of `edge-inspect triton-server`: the wheel's server in the foreground."""
    try:
        settings = dataclasses.replace(
            wheel_settings(
                args.repository,
                args.grpc_port,
                args.http_port,
                args.metrics_port,
                args.backend_dir or default_backend_dir(),
            ),
            address=args.address,
            model_control=args.model_control,
            log_verbose=args.log_verbose,
        )
        return serve_forever(settings)
    except TritonServerError as exc:
        print(f"edge-inspect triton-server: {exc}", file=sys.stderr)
        return 1
