"""Prometheus metrics: every name in one place, units in the name, bounded label sets
(tool and recipe come from the config, reason/decision/class from fixed lists)."""

from __future__ import annotations

import platform

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from calibration.controller import STATUSES
from edge import __version__
from edge.ops.stage_cpu import StageCpu

# Buckets that resolve a 200 ms end-to-end budget.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.5, 1.0, 2.0)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        # process_* (CPU, memory, open files), python_info and python_gc_*: the standard collectors
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.build_info = Info("edge_build", "The daemon's version and its Python", registry=r)
        self.build_info.info({"version": __version__, "python": platform.python_version()})
        self.model_info = Gauge(
            "edge_model_info",
            "1 for each model version the daemon routes frames to: its digest (first 12 hex) and role (live, canary, "
            "shadow)",
            ["model", "version", "digest", "role"],
            registry=r,
        )
        self.model_commands = Counter(
            "edge_model_commands_total",
            "Model lifecycle commands, by action and status",
            ["action", "status"],
            registry=r,
        )
        self.model_compared = Counter(
            "edge_model_compared_total",
            "Frames a shadow or canary comparison scored twice: agree, disagree (decision), failed or dropped",
            ["version", "role", "result"],
            registry=r,
        )
        self.model_guardrail_breaches = Counter(
            "edge_model_guardrail_breaches_total", "Canaries rolled back by a guardrail, by rule", ["rule"], registry=r
        )
        self.frames_received = Counter("edge_frames_received_total", "Frames received", ["tool"], registry=r)
        self.frames_rejected = Counter(
            "edge_frames_rejected_total", "Frames rejected as bad input", ["reason"], registry=r
        )
        self.frames_busy = Counter(
            "edge_frames_busy_total", "Frames answered busy, by reason", ["tool", "reason"], registry=r
        )
        self.frames_duplicate = Counter(
            "edge_frames_duplicate_total", "Resent frames answered from the recorded result", ["tool"], registry=r
        )
        self.decisions = Counter(
            "edge_decisions_total",
            "Frames by decision and class",
            ["tool", "recipe", "decision", "class"],
            registry=r,
        )
        self.suppressed = Counter(
            "edge_suppressed_candidates_total",
            "Defect candidates under their threshold",
            ["tool", "class"],
            registry=r,
        )
        self.inflight = Gauge("edge_inflight_frames", "Accepted frames not yet answered", registry=r)
        self.queue_depth = Gauge("edge_batch_queue_depth", "Frames waiting for a batch", registry=r)
        self.batch_size = Histogram("edge_batch_size", "Frames per Triton batch", buckets=BATCH_BUCKETS, registry=r)
        self.e2e_latency = Histogram(
            "edge_e2e_latency_seconds", "Frame received to reply sent", buckets=LATENCY_BUCKETS, registry=r
        )
        self.stage_latency = Histogram(
            "edge_stage_latency_seconds", "Time per pipeline stage", ["stage"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.stage_cpu_seconds = Counter(
            "edge_stage_cpu_seconds", "CPU time spent per pipeline stage, on its thread", ["stage"], registry=r
        )
        self.stage_cpu = StageCpu(self.stage_cpu_seconds)  # edge.ops.stage_cpu: how the stages count
        self.inference_errors = Counter("edge_inference_errors_total", "Failed Triton batches", ["reason"], registry=r)
        self.internal_errors = Counter(
            "edge_internal_errors_total", "Defects caught before they stopped a stage", ["stage"], registry=r
        )
        self.decode_restarts = Counter(
            "edge_decode_worker_restarts_total",
            "Decode worker processes started in place of one that died (ingest.decode_processes)",
            registry=r,
        )
        self.task_restarts = Counter(
            "edge_task_restarts_total",
            "Rounds of a periodic task that failed; the next round ran",
            ["task"],
            registry=r,
        )
        self.triton_up = Gauge("edge_triton_ready", "1 when Triton and both models are ready", registry=r)
        self.broker_up = Gauge("edge_mqtt_connected", "1 when connected to the MQTT broker", registry=r)
        self.outbox_backlog = Gauge("edge_outbox_backlog_events", "Events not yet acknowledged", registry=r)
        self.outbox_bytes = Gauge("edge_outbox_bytes", "Disk space the outbox holds", registry=r)
        self.outbox_quota = Gauge("edge_outbox_quota_bytes", "The outbox's disk quota", registry=r)
        self.outbox_pruned = Counter(
            "edge_outbox_pruned_total", "Rows pruned after the retention period", ["table"], registry=r
        )
        self.outbox_group = Histogram(
            "edge_outbox_writes_per_commit",
            "Batches (and station messages) each outbox commit carried: those that came while the one before synced",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.captures = Counter(
            "edge_captures_total", "Dies captured for review, by why (DEFECT, REVIEW, AUDIT, BORDERLINE)", ["reason"],
            registry=r,
        )  # fmt: skip
        self.capture_bytes = Gauge("edge_capture_bytes", "Disk space the kept captures hold", registry=r)
        self.capture_quota = Gauge("edge_capture_quota_bytes", "The capture store's byte quota", registry=r)
        self.captures_pruned = Counter(
            "edge_captures_pruned_total", "Captures pruned, by why (retention, quota)", ["reason"], registry=r
        )
        self.capture_failures = Counter(
            "edge_capture_failures_total",
            "Captures not kept, by why (write_failed, queue_full)",
            ["reason"],
            registry=r,
        )
        self.capture_write = Histogram(
            "edge_capture_write_seconds", "Time to encode and write one batch's captures (after its replies)",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference_retries = Counter(
            "edge_inference_retries_total", "Batches sent to Triton again after it could not take them", registry=r
        )
        self.events_published = Counter(
            "edge_events_published_total", "Events acknowledged by the broker", ["decision"], registry=r
        )
        self.events_republished = Counter(
            "edge_events_republished_total",
            "Events the broker had acknowledged just before the link to it dropped, published again",
            registry=r,
        )
        self.mes_messages = Counter("edge_mes_messages_total", "MES messages accepted", ["kind"], registry=r)
        self.mes_rejected = Counter("edge_mes_messages_rejected_total", "MES messages rejected", ["reason"], registry=r)
        self.context_missing = Counter(
            "edge_context_missing_total", "Frames that went on without MES process context", ["tool"], registry=r
        )
        self.join_skipped = Counter(
            "edge_join_skipped_total", "Frames that went on without waiting for a log not expected (why: "
            "wafer_expired, its wafer's window ran out before; tool_silent, its tool's MES is silent)",
            ["tool", "why"], registry=r,
        )  # fmt: skip
        self.mes_silent = Gauge(
            "edge_mes_silent", "1 while a tool's MES is silent (its frames do not wait for logs), else 0", ["tool"],
            registry=r,
        )  # fmt: skip

        def per_class(name: str, documentation: str) -> Gauge:
            return Gauge(name, documentation, ["recipe", "tool", "class"], registry=r)

        self.calib_threshold = per_class("edge_calibration_threshold", "Confidence threshold in force")
        self.calib_fpr = per_class(
            "edge_calibration_fpr_3lot_ratio",
            "False positives / inspected negatives at the threshold in force: over the FPR window (seed controller) "
            "or as estimated from the evidence in memory (statistical controller)",
        )
        self.calib_certified = per_class(
            "edge_calibration_certified_fpr_ratio",
            "Exact 95% upper bound on FPR at the threshold in force (statistical controller only)",
        )
        self.calib_status = Enum(
            "edge_calibration_status",
            "The class's calibration stage (1 on the stage it is in)",
            ["recipe", "tool", "class"],
            states=list(STATUSES),
            registry=r,
        )
        self.calib_escape = per_class(
            "edge_calibration_escape_ratio", "Estimated share of real defects suppressed, from AUDIT reviews"
        )
        self.reviews = Counter("edge_reviews_total", "Review dispositions received", ["result"], registry=r)
        self.rebaselines = Counter(
            "edge_rebaselines_total",
            "Re-baseline commands received (accepted, or why not)",
            ["result"],
            registry=r,
        )
        self.lots_closed = Counter("edge_lots_closed_total", "Lot ends that ran the calibration", ["tool"], registry=r)
        self.notes_missing = Counter(
            "edge_notes_missing_total", "Frames without an operator note", ["tool"], registry=r
        )
        self.calib_budget = per_class("edge_calibration_fpr_budget_ratio", "FPR budget of the class (engineer setting)")
        # MES context
        self.process_excursions = Counter(
            "edge_process_excursions_total",
            "Process logs with a parameter past the anomaly sigma",
            ["tool"],
            registry=r,
        )
        # drift, per recipe x tool
        self.drift_ks = Gauge(
            "edge_drift_score_ks",
            "KS statistic of PASS anomaly scores, recent window against the reference",
            ["recipe", "tool"],
            registry=r,
        )
        self.drift_param_shift = Gauge(
            "edge_drift_param_shift_sigma",
            "Largest process-parameter mean shift, in reference standard deviations",
            ["recipe", "tool"],
            registry=r,
        )
        self.drift_active = Gauge(
            "edge_drift_active",
            "1 while drift of this kind (score | process) is raised",
            ["recipe", "tool", "kind"],
            registry=r,
        )
        self.drift_events = Counter("edge_drift_events_total", "Drift events raised", ["tool", "kind"], registry=r)
        self.drift_threshold = Gauge(
            "edge_drift_threshold",
            "Level that raises drift: KS statistic (score) or sigmas (process)",
            ["kind"],
            registry=r,
        )
        # wafers
        self.wafers_summarised = Counter(
            "edge_wafers_summarised_total", "Wafer summaries published", ["tool"], registry=r
        )
        self.wafer_severity = Histogram(
            "edge_wafer_severity",
            "Severity (0-100) of summarised wafers",
            ["tool"],
            buckets=(10, 20, 30, 40, 50, 60, 70, 80, 90, 100),
            registry=r,
        )
        self.wafer_late_dies = Counter(
            "edge_wafer_late_dies_total",
            "Dies that came after their wafer was summarised (left out of it)",
            ["tool"],
            registry=r,
        )
        self.wafer_alerts = Counter(
            "edge_wafer_alerts_total", "Wafers whose severity raised an alert", ["tool", "pattern"], registry=r
        )
        # what serves each model: its TensorRT plan, or a fallback (edge.inference.model_facts)
        self.model_backend = Gauge(
            "edge_model_backend_info",
            "1 for each model of the live version: the backend it runs on (tensorrt; onnxruntime, Triton's ONNX "
            "Runtime backend on the GPU; onnxruntime_cpu, the CPU variant) and why it is not its TensorRT plan "
            "(fallback: engine_build_failed, parity_failed, no_gpu; empty when it is)",
            ["model", "backend", "fallback"],
            registry=r,
        )
        self.triton_requests = Counter(
            "edge_triton_requests_total",
            "Inference requests sent to Triton, by how their image tensor went (shared_memory, grpc)",
            ["transport"],
            registry=r,
        )
        self.triton_shared_memory = Gauge(
            "edge_triton_shared_memory",
            "1 while the image tensors' shared-memory regions are registered with Triton, else 0 (plain gRPC)",
            registry=r,
        )
