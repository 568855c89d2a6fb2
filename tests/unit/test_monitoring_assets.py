"""The monitoring assets in systemd/monitoring/: the Prometheus rules pass `promtool check rules` and their unit tests
(`promtool test rules`), the example Prometheus config passes `promtool check config`, and every metric and label the
rules and the Grafana dashboard query is one the daemon exports (edge.ops.metrics), so a renamed metric or a dropped
label breaks a test here instead of an alert going silent on a station.

promtool comes from Debian's `prometheus` package (`make deps`); without it these tests fail, never skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

from edge.ops.metrics import Metrics

MONITORING = Path(__file__).resolve().parents[2] / "systemd" / "monitoring"
RULES = MONITORING / "edge-alerts.yml"
RULE_TESTS = MONITORING / "edge-alerts.test.yml"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
DASHBOARD = MONITORING / "edge-dashboard.json"

# Labels Prometheus attaches to every scraped series: job and instance, and station from the scrape job's target
# labels (prometheus.yml); `le` only on histogram buckets.
TARGET_LABELS = frozenset({"job", "instance", "station"})
# What the brief for fab ops asked to be alerted on; more alerts may join.
REQUIRED_ALERTS = frozenset(
    {
        "EdgeDaemonDown",
        "EdgeLatencyP99OverBudget",
        "EdgeOutboxBacklogGrowing",
        "EdgeOutboxNearQuota",
        "EdgeTritonNotReady",
        "EdgeBrokerDisconnected",
        "EdgeFprOverBudget",
        "EdgeDriftActive",
        "EdgeFramesRejectedRateHigh",
        "EdgeFramesNotInspected",
        "EdgeMesContextMissing",
        "EdgeCriticalWaferAlert",
    }
)
DASHBOARD_ROWS = (
    "Throughput",
    "Latency",
    "Outbox and broker",
    "Triton",
    "Calibration",
    "MES context",
    "Drift",
    "Wafers",
    "Models",
)
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


# ---- promtool ---------------------------------------------------------------------------------------------------
def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool in the monitoring folder; fails (never skips) when it is not installed."""
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: run `make deps` (Debian package prometheus)", pytrace=False)
    return subprocess.run([binary, *args], cwd=MONITORING, capture_output=True, text=True, timeout=120)


def test_rules_pass_promtool_check_with_lint() -> None:
    result = promtool("check", "rules", "--lint=all", "--lint-fatal", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"SUCCESS: (\d+) rules found", result.stdout)
    assert found, result.stdout
    # the expression scanner below sees every rule promtool sees
    assert int(found.group(1)) == len(rule_exprs()), "rule scanner out of step with promtool"


def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_example_prometheus_config_passes_promtool_check() -> None:
    result = promtool("check", "config", PROMETHEUS_CONFIG.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert RULES.name in result.stdout  # the config loads the rules beside it


STANDARD_COLLECTORS = ("process_", "python_")  # prometheus_client's ProcessCollector, PlatformCollector, GCCollector


# ---- the metrics the daemon exports -----------------------------------------------------------------------------
def exported_series() -> dict[str, frozenset[str]]:
    """Every series name a fresh `Metrics()` can export, with its label names, following prometheus_client's naming:
    a counter `x` (declared `x` or `x_total`) exports `x_total` and `x_created`, a histogram `x` exports
    `x_bucket` (with `le`), `x_sum`, `x_count` and `x_created`, a gauge `x` exports `x`, an enum `x` exports `x`
    with a label `x` (the state); an info metric and prometheus_client's own collectors (`process_*`, `python_*`)
    export what they collect."""
    metrics = Metrics()
    wrappers = [v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)]
    families = {family.name for family in metrics.registry.collect()} | {d.name for w in wrappers for d in w.describe()}
    own = {name for name in families if not name.startswith(STANDARD_COLLECTORS)}
    assert {w._name for w in wrappers} == own, "a registered metric is not an attribute of Metrics"
    assert families - own, "the process and Python collectors are registered"
    series: dict[str, frozenset[str]] = {}
    for family in metrics.registry.collect():
        if family.name.startswith(STANDARD_COLLECTORS) or family.type == "info":
            series.update({sample.name: frozenset(sample.labels) for sample in family.samples})
    for w in wrappers:
        labels = frozenset(w._labelnames)
        suffixes = {
            "counter": {"_total": labels, "_created": labels},
            "gauge": {"": labels},
            "stateset": {"": labels | {w._name}},
            "info": {},
            "histogram": {"_bucket": labels | {"le"}, "_sum": labels, "_count": labels, "_created": labels},
            "summary": {"": labels | {"quantile"}, "_sum": labels, "_count": labels, "_created": labels},
        }
        assert w._type in suffixes, f"{w._name}: metric type {w._type} not handled by this test"
        for suffix, names in suffixes[w._type].items():
            series[w._name + suffix] = frozenset(names)
    series["up"] = frozenset()
    return series


def test_exported_series_follow_prometheus_client_naming() -> None:
    series = exported_series()
    assert series["edge_frames_received_total"] == {"tool"}
    assert series["edge_e2e_latency_seconds_bucket"] == {"le"}
    assert series["edge_stage_latency_seconds_count"] == {"stage"}
    assert series["edge_outbox_bytes"] == frozenset()
    assert "edge_frames_received" not in series and "edge_triton_ready_total" not in series
    assert series["edge_calibration_status"] == {"recipe", "tool", "class", "edge_calibration_status"}
    assert series["edge_build_info"] == {"version", "python"} and series["edge_model_info"] == {
        "model",
        "version",
        "digest",
        "role",
    }
    assert "process_resident_memory_bytes" in series and "python_info" in series


# ---- a small PromQL scanner: metric selectors, their matchers, and the label lists of by/without/on/... ---------
TOKEN = re.compile(
    r"""
    (?P<ws>\s+) | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<duration>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*\b)
  | (?P<number>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>(){},@])
""",
    re.VERBOSE,
)
LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = LABEL_LISTS | {"bool", "and", "or", "unless", "offset", "atan2", "inf", "nan", "start", "end"}
AGGREGATIONS = frozenset(
    {
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "limitk",
        "limit_ratio",
    }
)
# Grafana's variables, replaced by what a query would get
GRAFANA_INTERVALS = re.compile(r"\$__(?:rate_interval|interval|range)\b|\$\{__(?:rate_interval|interval|range)\}")


def tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        assert m, f"cannot read PromQL at {expr[pos : pos + 40]!r} in {expr!r}"
        if m.lastgroup not in ("ws", "comment"):
            out.append((m.lastgroup, m.group()))
        pos = m.end()
    return out


def closing(toks: list[tuple[str, str]], i: int) -> int:
    """Index of the bracket closing the one at `i`."""
    pairs = {"(": ")", "{": "}"}
    opener, depth = toks[i][1], 0
    for j in range(i, len(toks)):
        if toks[j][1] == opener:
            depth += 1
        elif toks[j][1] == pairs[opener]:
            depth -= 1
            if depth == 0:
                return j
    raise AssertionError(f"unbalanced {opener}")


def names_in(toks: list[tuple[str, str]]) -> list[str]:
    return [v for k, v in toks if k == "ident"]


class Query:
    """What one PromQL expression asks for."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        toks = tokens(GRAFANA_INTERVALS.sub("5m", expr))
        self.selectors: list[tuple[str, set[str]]] = []  # (metric, labels matched on it)
        self.grouping: list[tuple[str, set[str], set[str]]] = []  # (keyword, labels, metrics in its scope)
        self.by_labels: set[str] = set()
        self.functions: set[str] = set()
        inside_list: set[int] = set()
        for i, (kind, value) in enumerate(toks):
            nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
            if kind == "op" and value == "{" and (i == 0 or toks[i - 1][0] != "ident"):
                raise AssertionError(f"selector without a metric name in {expr!r}")
            if kind != "ident" or i in inside_list:
                continue
            if value in LABEL_LISTS:
                if nxt == "(":
                    end = closing(toks, i + 1)
                    labels = set(names_in(toks[i + 2 : end]))
                    inside_list.update(range(i + 1, end + 1))
                    self.grouping.append((value, labels, self._scope(toks, i)))
                    if value == "by":
                        self.by_labels |= labels
                continue
            if value in KEYWORDS:
                continue
            if nxt == "(" or (value in AGGREGATIONS and nxt in ("by", "without")):
                self.functions.add(value)
                continue
            matchers: set[str] = set()
            if nxt == "{":
                end = closing(toks, i + 1)
                body = toks[i + 2 : end]
                matchers = {
                    v
                    for j, (k, v) in enumerate(body)
                    if k == "ident" and j + 1 < len(body) and body[j + 1][1] in ("=", "!=", "=~", "!~")
                }
                inside_list.update(range(i + 1, end + 1))
            self.selectors.append((value, matchers))

    @staticmethod
    def _scope(toks: list[tuple[str, str]], i: int) -> set[str]:
        """Metrics a label list speaks of: an aggregation's argument (`sum by (x) (...)` or `sum(...) by (x)`), or
        for on/ignoring/group_* the whole expression."""
        keyword = toks[i][1]
        if keyword in ("by", "without"):
            end_list = closing(toks, i + 1)
            if toks[i - 1][1] in AGGREGATIONS and end_list + 1 < len(toks) and toks[end_list + 1][1] == "(":
                start = end_list + 1  # sum by (x) (...)
            elif toks[i - 1][1] == ")":  # sum(...) by (x): find the argument's opening bracket
                depth, start = 0, i - 1
                while start >= 0:
                    depth += {")": 1, "(": -1}.get(toks[start][1], 0)
                    if depth == 0:
                        break
                    start -= 1
            else:
                raise AssertionError(f"cannot place `{keyword}` in {' '.join(v for _, v in toks)}")
            span = toks[start : closing(toks, start) + 1]
        else:
            span = toks
        found, skip = set(), ""
        for j, (k, v) in enumerate(span):
            if v == "{" or (v in LABEL_LISTS and j + 1 < len(span) and span[j + 1][1] == "("):
                skip = "}" if v == "{" else ")"
            elif skip and v == skip:
                skip = ""
            elif not skip and k == "ident" and v not in KEYWORDS and (j + 1 >= len(span) or span[j + 1][1] != "("):
                found.add(v)
        return found


def check_query(expr: str, series: dict[str, frozenset[str]], where: str) -> list[str]:
    """Problems of one expression against the exported series (and the recorded ones in `series`)."""
    query, problems = Query(expr), []
    for metric, matchers in query.selectors:
        if metric not in series:
            problems.append(f"{where}: {metric} is not exported by edge.ops.metrics (nor recorded, nor `up`)")
            continue
        unknown = matchers - series[metric] - TARGET_LABELS
        if unknown:
            problems.append(f"{where}: {metric} has no label {sorted(unknown)} (it has {sorted(series[metric])})")
    for keyword, labels, scope in query.grouping:
        known = [series[m] for m in scope if m in series]
        if not known:
            continue
        carried = frozenset().union(*known) | TARGET_LABELS
        unknown = labels - carried
        if unknown:
            problems.append(
                f"{where}: {keyword} ({', '.join(sorted(labels))}): no metric among {sorted(scope)} "
                f"has {sorted(unknown)}"
            )
    return problems


def test_the_scanner_finds_metrics_matchers_and_label_lists() -> None:
    q = Query(
        "histogram_quantile(0.99, sum by (station, le) (rate(edge_e2e_latency_seconds_bucket"
        '{job="edge-inspect", station=~"$station"}[$__rate_interval]))) > 0.2'
    )
    assert q.selectors == [("edge_e2e_latency_seconds_bucket", {"job", "station"})]
    assert q.grouping == [("by", {"station", "le"}, {"edge_e2e_latency_seconds_bucket"})]
    q = Query('sum(rate(a_total{x="1"}[5m])) by (tool) / on (tool) group_left b offset 5m and bool c')
    assert [m for m, _ in q.selectors] == ["a_total", "b", "c"]
    assert q.grouping[0] == ("by", {"tool"}, {"a_total"})
    assert q.grouping[1] == ("on", {"tool"}, {"a_total", "b", "c"})
    series = exported_series()
    assert check_query("sum by (tool) (rate(edge_e2e_latency_seconds_count[5m]))", series, "q") != []
    assert check_query('edge_triton_ready{tool="AOI-01"}', series, "q") != []
    assert check_query("edge_frames_received", series, "q") != []
    assert check_query('sum by (tool, station) (rate(edge_frames_received_total{tool="x"}[5m]))', series, "q") == []


# ---- the rules file, read without a YAML library: rule names and their `expr` ------------------------------------
def rule_blocks() -> Iterator[tuple[str, str, str]]:
    """(kind, name, text) of every rule: kind is `alert` or `record`, text is the rule's lines."""
    text = RULES.read_text()
    starts = list(re.finditer(r"^\s*- (alert|record):\s*(\S+)\s*$", text, re.MULTILINE))
    group_starts = [m.start() for m in re.finditer(r"^\s*- name:", text, re.MULTILINE)]
    for n, m in enumerate(starts):
        end = starts[n + 1].start() if n + 1 < len(starts) else len(text)
        end = min([g for g in group_starts if m.start() < g < end] or [end])
        yield m.group(1), m.group(2), text[m.start() : end]


def block_expr(block: str) -> str:
    lines = block.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)expr:\s*(.*?)\s*$", line)
        if not m:
            continue
        indent, rest = len(m.group(1)), m.group(2)
        if rest in ("|", "|-", ">", ">-"):
            body = []
            for more in lines[i + 1 :]:
                if more.strip() and len(more) - len(more.lstrip()) <= indent:
                    break
                body.append(more.strip())
            return "\n".join(body).strip()
        if rest[:1] in ("'", '"'):
            return rest[1:-1].replace("''", "'") if rest[0] == "'" else json.loads(rest)
        return rest
    raise AssertionError(f"no expr in {block!r}")


def rule_exprs() -> list[tuple[str, str, str]]:
    return [(kind, name, block_expr(block)) for kind, name, block in rule_blocks()]


def recorded_series(series: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    """The recording rules' series and their labels: the `by` labels of their aggregations (le dropped by
    histogram_quantile), or the labels of their one metric."""
    recorded: dict[str, frozenset[str]] = {}
    for kind, name, expr in rule_exprs():
        if kind != "record":
            continue
        query = Query(expr)
        if query.by_labels:
            labels = set(query.by_labels)
            if "histogram_quantile" in query.functions:
                labels.discard("le")
        else:
            metrics = {m for m, _ in query.selectors}
            assert len(metrics) == 1, f"{name}: cannot tell the labels of a recorded series without `by`"
            labels = set(series.get(metrics.pop(), frozenset())) | TARGET_LABELS
        recorded[name] = frozenset(labels)
    return recorded


def all_series() -> dict[str, frozenset[str]]:
    series = exported_series()
    return {**series, **recorded_series(series)}


def test_every_alert_has_for_severity_and_annotations_naming_the_station() -> None:
    alerts = [(name, block) for kind, name, block in rule_blocks() if kind == "alert"]
    assert {name for name, _ in alerts} >= REQUIRED_ALERTS, REQUIRED_ALERTS - {name for name, _ in alerts}
    for name, block in alerts:
        assert re.search(r"^\s*for: \d+[smh]\s*$", block, re.MULTILINE), f"{name}: no `for:`"
        assert re.search(r"^\s*severity: (critical|warning|info)\s*$", block, re.MULTILINE), f"{name}: no severity"
        for annotation in ("summary", "description", "runbook"):
            assert re.search(rf"^\s*{annotation}:", block, re.MULTILINE), f"{name}: no {annotation} annotation"
        summary = re.search(r"^\s*summary:(.*)$", block, re.MULTILINE).group(1)
        assert "$labels.station" in summary, f"{name}: the summary does not name the station"


def test_per_tool_alerts_name_the_tool() -> None:
    series = all_series()
    for kind, name, block in rule_blocks():
        if kind == "alert":
            query = Query(block_expr(block))
            metrics = [m for m, _ in query.selectors if m != "up"]
            has_tool = bool(metrics) and all("tool" in series.get(m, frozenset()) for m in metrics)
            if has_tool and (not query.by_labels or "tool" in query.by_labels):
                assert "$labels.tool" in block, f"{name}: a per-tool alert whose text does not name the tool"


def test_rules_query_only_exported_metrics_and_labels() -> None:
    series, problems = all_series(), []
    for kind, name, expr in rule_exprs():
        problems += check_query(expr, series, f"{kind} {name}")
    assert problems == [], "\n".join(problems)


def test_recording_rules_keep_the_target_labels() -> None:
    for name, labels in recorded_series(exported_series()).items():
        assert {"job", "instance", "station"} <= labels, f"{name} drops a target label: {sorted(labels)}"
        assert re.fullmatch(r"edge:[a-z0-9_]+:[a-z0-9_]+", name), f"{name}: not level:metric:operations"


# ---- the Grafana dashboard --------------------------------------------------------------------------------------
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict) -> Iterator[dict]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside it


def walk_datasources(node: object) -> Iterator[object]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            else:
                yield from walk_datasources(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_datasources(item)


def test_dashboard_loads_with_a_datasource_variable_and_station_and_tool_variables() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("station", "tool"):
        var = variables[name]
        assert var["type"] == "query" and var["datasource"] == DATASOURCE
        assert re.fullmatch(rf"label_values\(.+, {name}\)", var["definition"]), var["definition"]
        assert var["query"]["query"] == var["definition"]
    assert "$station" in variables["tool"]["definition"]  # tools of the chosen stations


def test_no_datasource_uid_is_hard_coded() -> None:
    for ds in walk_datasources(dashboard()):
        assert ds == DATASOURCE or ds == {"type": "grafana", "uid": "-- Grafana --"}, ds


def test_every_panel_uses_the_datasource_variable_and_has_a_query() -> None:
    board = dashboard()
    rows = [p["title"] for p in panels(board) if p["type"] == "row"]
    assert tuple(rows) == DASHBOARD_ROWS
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, f"{panel['title']}: datasource {panel.get('datasource')}"
        assert panel["targets"], f"{panel['title']}: no target"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, f"{panel['title']}: target datasource"
            assert target["expr"].strip(), f"{panel['title']}: empty query"


def test_dashboard_panels_do_not_overlap() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_dashboard_queries_only_exported_metrics_and_labels() -> None:
    board, series, problems = dashboard(), all_series(), []
    for panel in panels(board):
        for target in panel.get("targets", []):
            problems += check_query(target["expr"], series, f"panel {panel['title']!r}")
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["definition"])
            assert m, var["definition"]
            problems += check_query(m.group(1), series, f"variable {var['name']}")
            metric = Query(m.group(1)).selectors[0][0]
            if m.group(2) not in series.get(metric, frozenset()) | TARGET_LABELS:
                problems.append(f"variable {var['name']}: {metric} has no label {m.group(2)}")
    assert problems == [], "\n".join(problems)


def test_dashboard_filters_by_tool_wherever_the_metric_has_a_tool_label() -> None:
    """A panel that ignores the tool variable shows every tool while one is picked; a tool matcher on a metric
    without the label (caught above) shows nothing."""
    series, missing = all_series(), []
    for panel in panels(dashboard()):
        for target in panel.get("targets", []):
            for metric, matchers in Query(target["expr"]).selectors:
                if metric in series and "tool" in series[metric] and "tool" not in matchers:
                    missing.append(f"{panel['title']}: {metric}")
                if metric in series and "station" not in matchers:
                    missing.append(f"{panel['title']}: {metric} without the station matcher")
    assert missing == [], "\n".join(missing)
