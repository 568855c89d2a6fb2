"""A whole station on this machine: Triton (CPU repository), a private Mosquitto, and the daemon as a
process, each on free loopback ports. Used by ``make demo`` and the end-to-end tests.

    with Station(workdir, repository) as st:
        st.daemon_frames  # tcp://127.0.0.1:PORT for the AOI simulator
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from edge.config import parse_config
from edge.models.cli import prepare
from edge.serving.tritonserver import TritonServer, TritonServerSettings, die_with_parent, free_port, wheel_settings
from tools.station.mosquitto import Mosquitto, mosquitto_binary

RECIPE = "R-7NM-L4"
TOOLS = ("AOI-01", "AOI-02")
# (repository, gRPC port, HTTP port, metrics port, scratch backend folder) -> the Triton to start, as wheel_settings
ServerSettings = Callable[[Path, int, int, int, Path], TritonServerSettings]


def station_toml(
    *,
    station: str,
    frames: str,
    feed: str,
    http_port: int,
    grpc_url: str,
    mqtt_port: int | None,
    outbox: Path,
    tools: tuple[str, ...] = TOOLS,
    recipes: tuple[str, ...] = (RECIPE,),
    extra: str = "",
    ingest: str = "",
    models_repository: Path | None = None,
) -> str:
    """A daemon config for this machine's loopback services; ``extra`` is appended, ``ingest`` goes into
    ``[ingest]`` (e.g. CURVE keys); ``models_repository``: the repository Triton serves in explicit model control,
    which the daemon then changes on command (``edge-inspect models``)."""
    tool_lines = "".join(f'[[tools]]\nid = "{t}"\n' for t in tools)
    recipe_lines = "".join(f'[recipes."{r}"]\n' for r in recipes)
    mqtt = (
        f'[mqtt]\nenabled = true\nport = {mqtt_port}\nprefix = "fab/edge"\n'
        if mqtt_port
        else "[mqtt]\nenabled = false\n"
    )
    store = outbox.with_name("calibration.sqlite")
    calibration = "" if "[calibration]" in extra else f'[calibration]\npath = "{store}"\n'
    outbox_section = "" if "[outbox]" in extra else f'[outbox]\npath = "{outbox}"\n'
    captures = "" if "[capture]" in extra else f'[capture]\npath = "{outbox.with_name("captures")}"\n'
    models = "" if "[models]" in extra else f'[models]\nledger = "{outbox.with_name("models.sqlite")}"\n'
    if models and models_repository is not None:
        models += f'repository = "{models_repository.resolve()}"\n'

    return (
        f'station = "{station}"\n{tool_lines}{recipe_lines}'
        f'[ingest]\nbind = "{frames}"\n{ingest}'
        f'[triton]\nurl = "{grpc_url}"\n'
        f"{mqtt}"
        f'[local_pub]\nbind = "{feed}"\n'
        f"{outbox_section}"
        f"[http]\nport = {http_port}\n"
        f"{calibration}{captures}{models}{extra}"
    )


class Station:
    def __init__(
        self,
        workdir: Path,
        repository: Path,
        *,
        with_broker: bool | None = None,
        station: str = "ST-01",
        config_extra: str = "",
        ingest_extra: str = "",
        persistent_broker: bool = False,
        tools: tuple[str, ...] = TOOLS,
        recipes: tuple[str, ...] = (RECIPE,),
        model_lifecycle: bool = False,
        server_settings: ServerSettings = wheel_settings,
    ) -> None:
        """``recipes``: the recipe tables written (none: ``config_extra`` brings its own, with their parameters);
        ``model_lifecycle``: Triton in explicit model control and the daemon steering it (``edge-inspect models``),
        writing the pins into ``repository``; ``server_settings``: which Triton to start, by default the
        nvidia-pytriton wheel's (``tools.gpu.check`` passes one with the TensorRT backend)."""
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.repository = repository
        self.station = station
        # None: a broker when Mosquitto is installed (the demo falls back to the local event feed); True: required
        if with_broker and mosquitto_binary() is None:
            raise FileNotFoundError("mosquitto is not installed: run `make deps` (Debian package mosquitto)")
        self.with_broker = with_broker is not False and mosquitto_binary() is not None
        self.config_extra = config_extra
        self.ingest_extra = ingest_extra
        self.persistent_broker = persistent_broker
        self.tools, self.recipes = tools, recipes
        self.model_lifecycle = model_lifecycle
        self.server_settings = server_settings
        self.triton: TritonServer | None = None
        self.broker: Mosquitto | None = None
        self.daemon: subprocess.Popen | None = None
        self.frames_port = free_port()
        self.feed_port = free_port()
        self.http_port = free_port()
        self.config_path = workdir / "edge.toml"
        self.daemon_log = workdir / "daemon.log"

    @property
    def daemon_frames(self) -> str:
        return f"tcp://127.0.0.1:{self.frames_port}"

    @property
    def event_feed(self) -> str:
        return f"tcp://127.0.0.1:{self.feed_port}"

    @property
    def mqtt_port(self) -> int | None:
        return self.broker.port if self.broker else None

    def start_triton(self) -> None:
        if not (self.repository / "anomaly").is_dir():
            raise FileNotFoundError(f"no model repository at {self.repository}: run `make models` first")
        served = self.repository
        if self.model_lifecycle:  # Triton serves the view of the versions the daemon chooses, loaded on command
            served = self._prepare_view()
        settings = self.server_settings(served, free_port(), free_port(), free_port(), self.workdir / "triton-backends")
        if self.model_lifecycle:
            settings = dataclasses.replace(settings, model_control="explicit")
        self.triton = TritonServer(settings, self.workdir / "tritonserver.log", ready_timeout_s=180)
        self.triton.start()
        self.triton.wait_ready()

    def _prepare_view(self) -> Path:
        """The served view, as `edge-inspect models prepare` makes it before Triton starts."""
        cfg = parse_config(tomllib.loads(station_toml(
            station=self.station, frames="tcp://127.0.0.1:1", feed="tcp://127.0.0.1:2", http_port=1,
            grpc_url="127.0.0.1:1", mqtt_port=None, outbox=self.workdir / "outbox.sqlite", tools=self.tools,
            recipes=self.recipes, models_repository=self.repository,
        )))  # fmt: skip
        prepare(cfg)
        assert cfg.models.view is not None
        return cfg.models.view

    def start_broker(self) -> None:
        if self.with_broker:
            self.broker = Mosquitto(self.workdir / "mosquitto", persistent=self.persistent_broker).start()

    def write_config(self) -> Path:
        assert self.triton is not None
        self.config_path.write_text(
            station_toml(
                station=self.station,
                frames=self.daemon_frames,
                feed=self.event_feed,
                http_port=self.http_port,
                grpc_url=self.triton.grpc_url,
                mqtt_port=self.mqtt_port,
                outbox=self.workdir / "outbox.sqlite",
                extra=self.config_extra,
                ingest=self.ingest_extra,
                tools=self.tools,
                recipes=self.recipes,
                models_repository=self.repository if self.model_lifecycle else None,
            )
        )
        return self.config_path

    def start_daemon(self, timeout_s: float = 60.0, ready: bool = True) -> None:
        """Start the daemon and wait until /readyz says ready (``ready=False``: until its models are
        loaded, for a daemon that is up but turns frames away)."""
        self.write_config()
        log = open(self.daemon_log, "ab")  # noqa: SIM115 - the child keeps it open
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=functools.partial(die_with_parent, os.getpid()),
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.daemon.returncode}:\n{self.daemon_log.read_text()}")
            if self.readyz().get("ready" if ready else "triton_ready"):
                return
            time.sleep(0.2)
        raise TimeoutError(f"daemon not ready within {timeout_s} s:\n{self.daemon_log.read_text()}")

    def stop_daemon(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int | None:
        process, self.daemon = self.daemon, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def readyz(self) -> dict:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=1) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as err:
            return json.loads(err.read())
        except (OSError, ValueError):
            return {}

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=2) as r:
            return r.read().decode()

    def __enter__(self) -> Station:
        try:
            self.start_broker()
            self.start_triton()
            self.start_daemon()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        self.stop_daemon()
        if self.triton:
            self.triton.stop()
        if self.broker:
            self.broker.stop()

    def __exit__(self, *exc) -> None:
        self.close()
