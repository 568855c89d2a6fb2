"""Typed daemon configuration: one TOML file, validated once at load; unknown keys are errors."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from edge.errors import ConfigError
from edge.ingest.admission import per_tool_share
from edge.mqtt_config import MqttConfig, Port
from edge.mqtt_config import Strict as _Strict
from edge.process_params import DEFAULT_PARAMETERS
from edge.taxonomy import DEFAULT_CLASSES

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
EventLoop = Literal["uvloop", "asyncio"]  # the daemon's (edge.ops.event_loop)


class IngestConfig(_Strict):
    bind: str = Field("tcp://127.0.0.1:5555", description="ZeroMQ ROUTER address the AOI tools connect to")
    also_bind: list[str] = Field(
        default_factory=list,
        description="more addresses of the same intake, e.g. ipc:///run/edge-inspect/frames.sock for tools on this "
        "host: a Unix socket (mode 0660) skips loopback TCP, whose delayed acknowledgements hold some large frames "
        "about 40 ms",
    )
    max_payload_bytes: int = Field(8 * 1024 * 1024, gt=0, description="largest accepted image payload")
    max_header_bytes: int = Field(16 * 1024, gt=0, description="largest accepted msgpack header")
    max_image_pixels: int = Field(4096 * 4096, gt=0, description="largest declared h*w, checked before decoding")
    image_height: int = Field(256, gt=0, description="height the models take")
    image_width: int = Field(256, gt=0, description="width the models take")
    resize: bool = Field(
        False,
        description="fit frames of another size by the input rule (edge.contract.images) instead of rejecting them",
    )
    max_inflight_frames: int = Field(256, gt=0, description="accepted frames not yet answered; beyond it: busy")
    decode_threads: int = Field(2, ge=1, le=64, description="threads decoding images; about one per core")
    decode_processes: int = Field(
        0,
        ge=0,
        le=64,
        description="worker processes decoding images instead of threads (0: threads); for stations whose frame rate "
        "needs more cores than the daemon's own process (edge.ingest.decoders); a worker that dies costs a restart, "
        "not the daemon",
    )
    frames_in_hand: int = Field(
        16,
        ge=1,
        le=1024,
        description="frames the intake handles at once (looked up in the outbox, decoding or waiting for a decode "
        "thread): while some wait on the outbox or a thread, others go on",
    )
    max_inflight_per_tool: int | None = Field(
        None,
        gt=0,
        description="frames one tool may hold; default: an equal share of max_inflight_frames, at least one batch",
    )
    busy_retry_after_ms: int = Field(50, gt=0, description="retry hint sent with a busy reply (its floor)")
    busy_retry_max_ms: int = Field(
        2000,
        gt=0,
        description="ceiling of the retry hint, which follows the frames' turnaround when a tool or "
        "the station is at its limit",
    )
    default_deadline_ms: int = Field(1500, gt=0, description="deadline of a frame whose header sets none")
    max_deadline_ms: int = Field(10_000, gt=0, description="upper bound on a header's deadline_ms")
    curve_secret_key_file: Path | None = Field(
        None,
        description="the daemon's ZeroMQ CURVE secret certificate (`edge-inspect curve-keygen`); "
        "set with curve_authorized_keys to encrypt the intake and admit only known tools; null: no CURVE",
    )
    curve_authorized_keys: Path | None = Field(
        None,
        description="directory of the tools' public certificates (*.key) allowed to connect; "
        "re-read when its files change",
    )

    @model_validator(mode="after")
    def _curve_files(self) -> IngestConfig:
        secret, keys = self.curve_secret_key_file, self.curve_authorized_keys
        if (secret is None) != (keys is None):
            raise ValueError("curve_secret_key_file and curve_authorized_keys go together: set both or neither")
        if secret is not None and not secret.is_file():
            raise ValueError(f"curve_secret_key_file: no such file: {secret}")
        if keys is not None and not keys.is_dir():
            raise ValueError(f"curve_authorized_keys: no such directory: {keys}")
        return self

    @model_validator(mode="after")
    def _addresses(self) -> IngestConfig:
        for address in (self.bind, *self.also_bind):
            if not address.startswith(("tcp://", "ipc://")):
                raise ValueError(f"intake address {address!r}: tcp://HOST:PORT or ipc://PATH")
        if len({self.bind, *self.also_bind}) != 1 + len(self.also_bind):
            raise ValueError("also_bind repeats an intake address")
        return self

    @model_validator(mode="after")
    def _retry_bounds(self) -> IngestConfig:
        if self.busy_retry_max_ms < self.busy_retry_after_ms:
            raise ValueError("busy_retry_max_ms must be at least busy_retry_after_ms")
        return self


class JoinConfig(_Strict):
    window_ms: int = Field(50, ge=0, description="how long a frame waits for its wafer's MES context")
    silent_after_wafers: int = Field(
        2, ge=1, description="wafers of a tool in a row whose window runs out with no log before its frames stop "
        "waiting (until a log of the tool arrives)",
    )  # fmt: skip
    cache_max_wafers: int = Field(
        5_000, gt=0, description="context cache entries kept (about 3.5 kB each with 48 parameters)"
    )
    cache_max_age_s: float = Field(24 * 3600.0, gt=0, description="context older than this is dropped")


class BatchingConfig(_Strict):
    max_batch: int = Field(16, gt=0, le=32, description="largest batch sent to Triton")
    max_delay_ms: float = Field(4.0, ge=0, description="longest a frame waits for its batch to fill")
    max_concurrent_batches: int = Field(2, gt=0, description="batches in flight to Triton at once")


class TritonConfig(_Strict):
    url: str = Field("127.0.0.1:8001", description="Triton gRPC endpoint host:port")
    anomaly_model: str = "anomaly"
    classifier_model: str = "classifier"
    timeout_ms: int = Field(2000, gt=0, description="per-request limit")
    ready_timeout_s: float = Field(120.0, gt=0, description="how long start-up waits for the models")
    health_interval_s: float = Field(2.0, gt=0, description="how often Triton's readiness is checked")
    retries: int = Field(3, ge=0, description="retries of a batch Triton could not take, within the frames' "
                         "deadlines")  # fmt: skip
    retry_backoff_ms: int = Field(100, gt=0, description="wait before the first retry; doubles each time")
    shared_memory: Literal["auto", "off"] = Field(
        "auto",
        description="auto: with a Triton on this host (loopback or Unix socket), send the image tensors through "
        "system shared memory registered with it, and fall back to plain gRPC where that fails; off: plain gRPC",
    )


class LocalPubConfig(_Strict):
    bind: str | None = Field("tcp://127.0.0.1:5556", description="ZeroMQ PUB for local consumers; null: off")


class OutboxConfig(_Strict):
    path: Path = Field(Path("var/edge/outbox.sqlite"), description="SQLite file of results and events")
    max_bytes: int = Field(2 * 1024**3, gt=0, description="disk quota; at it, new frames are answered busy")
    retention_hours: float = Field(
        24.0,
        gt=0,
        description="results (the de-duplication record) and acknowledged events older than this are "
        "pruned; unacknowledged events never are",
    )
    prune_interval_s: float = Field(60.0, gt=0, description="how often old rows are pruned")


class CaptureConfig(_Strict):
    """Dies kept for review (DESIGN 3.9): every DEFECT, REVIEW and AUDIT die and the borderline passes."""

    enabled: bool = Field(True, description="keep captures; false: events carry no capture and nothing is kept")
    path: Path = Field(Path("var/edge/captures"), description="folder of the capture index and die images")
    max_bytes: int = Field(5 * 1024**3, gt=0, description="byte quota of the kept captures; the oldest go first")
    retention_days: float = Field(30.0, gt=0, description="captures older than this are pruned")
    tombstone_days: float = Field(
        90.0, gt=0, description="how long a pruned capture is still known as gone (410) rather than unknown (404)"
    )
    borderline_margin: float = Field(
        0.05, ge=0, le=0.5,
        description="a PASS die is kept when a defect class came within this much under its threshold; 0: none",
    )  # fmt: skip
    prune_interval_s: float = Field(300.0, gt=0, description="how often retention and quota are applied")


class ReviewUser(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    role: Literal["viewer", "reviewer", "engineer"] = Field(
        description="viewer: look; reviewer: also decide review items; engineer: also steer calibration"
    )
    password_hash: str | None = Field(
        None, description="argon2 hash (`edge-inspect review --hash-password`); none: only through trusted_user_header"
    )


class ReviewConfig(_Strict):
    """The review service (`edge-inspect review`): its own process, reading the capture and calibration stores."""

    host: str = Field("127.0.0.1", description="address to listen on; put TLS in a reverse proxy in front of it")
    port: Port = 9110
    users: list[ReviewUser] = Field(default_factory=list)
    trusted_user_header: str | None = Field(
        None,
        description="a header naming the user, set by an authenticating reverse proxy (the name must be in users); "
        "only set it when nothing else can reach the service",
    )
    session_minutes: float = Field(720.0, gt=0, description="a login lasts this long without use")
    secure_cookies: bool = Field(False, description="mark the session cookie Secure (TLS in front of the service)")
    max_body_bytes: int = Field(64 * 1024, gt=0, description="largest JSON request body accepted")
    max_upload_bytes: int = Field(8 * 1024 * 1024, gt=0, description="largest image an engineer may upload to inspect")
    inspect_per_minute: int = Field(20, gt=0, description="ad-hoc inspections a user may run per minute")

    @model_validator(mode="after")
    def _unique_users(self) -> ReviewConfig:
        names = [u.name for u in self.users]
        if len(set(names)) != len(names):
            raise ValueError("review.users: duplicate name")
        return self


class HttpConfig(_Strict):
    host: str = Field("127.0.0.1", description="address of /metrics, /healthz, /readyz")
    port: Port = 9108


class ThresholdEntry(_Strict):
    recipe: str = "*"
    tool: str = "*"
    defect_class: str = Field(alias="class")
    threshold: Annotated[float, Field(ge=0.5, le=0.95)]


class BandEntry(_Strict):
    recipe: str = "*"
    tool: str = "*"
    pass_band: float = Field(alias="pass", ge=0)
    reject_band: float = Field(alias="reject", ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> BandEntry:
        if not self.pass_band < self.reject_band:
            raise ValueError("pass must be below reject")
        return self


class DecisionConfig(_Strict):
    default_threshold: Annotated[float, Field(ge=0.5, le=0.95)] = Field(
        0.6, description="escape-averse start value of every class threshold"
    )
    audit_fraction: Probability = Field(0.05, description="share of suppressed candidates sent as AUDIT")
    thresholds: list[ThresholdEntry] = Field(default_factory=list)
    bands: list[BandEntry] = Field(
        default_factory=list, description="anomaly bands per recipe x tool; default: the model's own"
    )
    classes: tuple[str, ...] = Field(DEFAULT_CLASSES, description="classifier output order; GOOD first")

    @model_validator(mode="after")
    def _known_classes(self) -> DecisionConfig:
        if not self.classes or self.classes[0] != "GOOD":
            raise ValueError("classes must start with GOOD")
        for entry in self.thresholds:
            if entry.defect_class not in self.classes[1:]:
                raise ValueError(f"thresholds: unknown class {entry.defect_class!r}")
        return self


class CalibrationConfig(_Strict):
    """Adaptive thresholds (DESIGN 3.7): the store, the controller per recipe, and the methodology's numbers."""

    path: Path = Field(Path("var/edge/calibration.sqlite"), description="calibration store (SQLite), shared with "
                       "`edge-inspect calib`")  # fmt: skip
    controller: Literal["seed", "statistical"] = "seed"
    controllers: dict[str, Literal["seed", "statistical"]] = Field(
        default_factory=dict, description="controller per recipe id, overriding `controller`"
    )
    fpr_denominator: Literal["all", "class"] = Field(
        "all", description="a class's false positives over every inspected negative of the recipe x tool (all) or "
        "over the negatives whose top class was that class (class)")  # fmt: skip
    denominators: dict[str, Literal["all", "class"]] = Field(
        default_factory=dict, description="FPR denominator per recipe id, overriding `fpr_denominator`"
    )
    real_rate: Literal["die", "reviewed"] = Field(
        "die", description="the seed rule's confirmed-real rate: per inspected die or per reviewed event"
    )
    escape_window_lots: int = Field(10, ge=1, description="the escape estimate covers the last this many lots")
    initial_lots: int = Field(50, ge=1, description="lots of initial calibration (escape-averse, full review)")
    window_lots: int = Field(3, ge=1, description="lots in the FPR window (fpr_3lot)")
    step_up: float = Field(0.02, gt=0, le=0.2)
    step_down: float = Field(0.01, ge=0, le=0.2)
    fpr_budget: float = Field(0.001, gt=0, lt=1)
    lower: Annotated[float, Field(ge=0.5, le=0.95)] = 0.5
    upper: Annotated[float, Field(ge=0.5, le=0.95)] = 0.95
    refresh_s: float = Field(2.0, gt=0, description="how often the store is checked for engineers' changes")
    reviews_topic: str = Field("reviews", description="dispositions arrive on {mqtt.prefix}/{station}/{this}")
    retention_days: float = Field(
        30.0,
        gt=0,
        description="candidates and counts of lots closed longer ago are pruned (states and the audit "
        "trail never are); the escape estimate covers this period",
    )

    @model_validator(mode="after")
    def _bounds(self) -> CalibrationConfig:
        if self.lower > self.upper:
            raise ValueError("lower must not be above upper")
        return self


class ProcessConfig(_Strict):
    """MES context checks: parameters far from their running per recipe x tool statistics."""

    anomaly_sigma: float = Field(
        4.0,
        gt=0,
        description="|z| at or over this lists a parameter as anomalous (48 parameters at 3 sigma would "
        "flag one on about 12% of normal wafers)",
    )
    min_wafers: int = Field(30, ge=2, description="wafers of a recipe x tool seen before z-scores are given")
    zmq_connect: list[str] = Field(
        default_factory=list,
        description="ZeroMQ PUB endpoints of an MES gateway sending [topic, json] the MQTT "
        "topics name (optional, beside MQTT)",
    )


class DriftConfig(_Strict):
    """Drift per recipe x tool: PASS anomaly scores (KS against a reference window) and process parameters."""

    reference_frames: int = Field(500, ge=20, description="first PASS scores after start: the reference")
    window_frames: int = Field(500, ge=20, description="recent PASS scores compared with the reference")
    ks_threshold: float = Field(0.2, gt=0, lt=1, description="KS statistic that raises score drift")
    reference_wafers: int = Field(50, ge=5, description="first process logs after start: the parameter reference")
    window_wafers: int = Field(50, ge=5, description="recent process logs compared with the reference")
    shift_sigma: float = Field(1.5, gt=0, description="mean shift (reference sigmas) that raises process drift")
    clear_ratio: float = Field(0.5, gt=0, lt=1, description="drift clears below this share of its raise level")
    save_interval_s: float = Field(
        60.0,
        gt=0,
        description="how often drift and parameter statistics are saved to the outbox (and at a stop), "
        "so a restart goes on from them",
    )
    rebaseline_topic: str = Field(
        "rebaseline",
        description="re-baseline commands (edge.rebaseline/1) arrive on {mqtt.prefix}/{station}/{this}",
    )


class WafersConfig(_Strict):
    """Wafer summaries on {prefix}/{station}/wafers/{tool}, alerts on .../alerts/{tool}."""

    idle_close_s: float = Field(120.0, gt=0, description="an open wafer with no new die for this long is closed")
    end_grace_s: float = Field(
        2.0, ge=0, description="an ended wafer is summarised once no die of it came for this long"
    )
    alert_severity: float = Field(80.0, ge=0, le=100, description="severity at or over this raises an alert")


class GuardrailConfig(_Strict):
    """What rolls a canary back by itself, judged on its most recent frames (``edge.models.guardrails``)."""

    window_frames: int = Field(500, ge=10, description="the canary's most recent frames the rates are read on")
    min_frames: int = Field(50, ge=1, description="no rule is judged on fewer frames")
    max_not_inspected: float = Field(0.01, ge=0, le=1, description="share of the canary's frames not inspected")
    max_p99_ratio: float = Field(2.0, gt=1, description="canary p99 latency over the live version's p99")
    max_disagreement: float = Field(
        0.10, gt=0, le=1, description="share of the canary's frames the live version decides otherwise"
    )
    max_escape_excess: float = Field(
        0.02, gt=0, le=1,
        description="confirmed escapes per reviewed die: the canary's rate over the live version's",
    )  # fmt: skip
    max_fpr_excess: float = Field(
        0.05, gt=0, le=1,
        description="false positives per reviewed flag: the canary's rate over the live version's",
    )  # fmt: skip
    min_reviews: int = Field(20, ge=1, description="reviewed dies of each version before the review rules judge")


class ModelsConfig(_Strict):
    """The model lifecycle (``edge-inspect models``): versions, hot swap and rollback, shadow and canary."""

    repository: Path | None = Field(
        None,
        description="the model repository holding the station's versions; null: versions are read from Triton but "
        "not changed",
    )
    served: Path | None = Field(
        None,
        description="the folder Triton serves, in explicit model control: links to the versions it is to hold "
        "(default: the repository's path with .served appended; `edge-inspect models prepare` makes it)",
    )
    ledger: Path = Field(Path("var/edge/models.sqlite"), description="route, audit trail and command results")
    commands_topic: str = Field("models/commands", description="commands arrive on {prefix}/{station}/{this}")
    results_topic: str = Field("models/results", description="their results go to {prefix}/{station}/{this}")
    events_topic: str = Field("models", description="edge.model_event/1 on {prefix}/{station}/{this}")
    load_timeout_s: float = Field(120.0, gt=0, description="how long Triton may take to load a version")
    held_frames: int = Field(64, ge=0, description="recent frames held to check a version before it serves")
    min_check_agreement: float = Field(
        0.0, ge=0, le=1,
        description="a version whose decisions on the held frames agree with the live version's less than this is "
        "refused as live (0: only a failure to score refuses it)",
    )  # fmt: skip
    compare_queue_batches: int = Field(
        8, ge=1, description="batches waiting for a shadow or canary comparison; more are dropped and counted"
    )
    disagreements_kept: int = Field(50, ge=1, description="the most disagreeing frames kept for shadow-report")
    guardrails: GuardrailConfig = GuardrailConfig()

    @property
    def view(self) -> Path | None:
        """The folder Triton serves, or None when this station does not change its versions."""
        if self.repository is None:
            return None
        return self.served or self.repository.with_name(self.repository.name + ".served")


class ToolConfig(_Strict):
    id: str = Field(min_length=1, max_length=64)
    description: str = ""


class RecipeConfig(_Strict):
    parameters: tuple[str, ...] = Field(
        DEFAULT_PARAMETERS,
        min_length=1,
        description="order of the classifier's process vector; must be the served classifier's own "
        "(its config's `process_parameters`), checked when the daemon starts",
    )

    @model_validator(mode="after")
    def _unique(self) -> RecipeConfig:
        if len(set(self.parameters)) != len(self.parameters):
            raise ValueError("parameters must be unique")
        return self


class Config(_Strict):
    station: str = Field("ST-01", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    event_loop: EventLoop = Field(
        "uvloop", description="the daemon's event loop: uvloop (less CPU per frame), or the standard library's"
    )
    tools: list[ToolConfig] = Field(min_length=1, description="AOI tools allowed to send frames")
    recipes: dict[str, RecipeConfig] = Field(min_length=1, description="recipes allowed, by id")
    ingest: IngestConfig = IngestConfig()
    join: JoinConfig = JoinConfig()
    batching: BatchingConfig = BatchingConfig()
    triton: TritonConfig = TritonConfig()
    mqtt: MqttConfig = MqttConfig()
    local_pub: LocalPubConfig = LocalPubConfig()
    outbox: OutboxConfig = OutboxConfig()
    capture: CaptureConfig = CaptureConfig()
    review: ReviewConfig = ReviewConfig()
    http: HttpConfig = HttpConfig()
    decision: DecisionConfig = DecisionConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    process: ProcessConfig = ProcessConfig()
    drift: DriftConfig = DriftConfig()
    wafers: WafersConfig = WafersConfig()
    models: ModelsConfig = ModelsConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        ids = [t.id for t in self.tools]
        if len(set(ids)) != len(ids):
            raise ValueError("tools: duplicate id")
        entries: list[ThresholdEntry | BandEntry] = [*self.decision.thresholds, *self.decision.bands]
        for entry in entries:
            if entry.tool != "*" and entry.tool not in ids:
                raise ValueError(f"decision: unknown tool {entry.tool!r}")
            if entry.recipe != "*" and entry.recipe not in self.recipes:
                raise ValueError(f"decision: unknown recipe {entry.recipe!r}")
        for recipe_id in self.calibration.controllers:
            if recipe_id not in self.recipes:
                raise ValueError(f"calibration.controllers: unknown recipe {recipe_id!r}")
        return self

    @property
    def tool_ids(self) -> frozenset[str]:
        return frozenset(t.id for t in self.tools)

    @property
    def per_tool_inflight(self) -> int:
        """Frames one tool may hold at once (``ingest.max_inflight_per_tool`` or an equal share)."""
        ing = self.ingest
        return ing.max_inflight_per_tool or per_tool_share(
            ing.max_inflight_frames, len(self.tools), self.batching.max_batch
        )


def _describe(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        lines.append(f"{where}: {item['msg']}")
    return "; ".join(lines)


def parse_config(data: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML file; ``ConfigError`` names the file and each bad key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: {err}") from None
    try:
        return parse_config(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
