"""Config: strict keys, cross-field rules, and the check-config command."""

import pytest

from edge.cli import main
from edge.config import load_config, parse_config
from edge.errors import ConfigError

MINIMAL = {"tools": [{"id": "AOI-01"}], "recipes": {"R1": {}}}


def test_minimal_config_gets_safe_defaults():
    cfg = parse_config(MINIMAL)
    assert cfg.ingest.bind.startswith("tcp://127.0.0.1")
    assert cfg.http.host == "127.0.0.1"
    assert len(cfg.recipes["R1"].parameters) == 48
    assert 0.5 <= cfg.decision.default_threshold <= 0.95


def test_unknown_key_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"batching\.max_batchsize"):
        parse_config({**MINIMAL, "batching": {"max_batchsize": 4}})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"decision": {"thresholds": [{"class": "NOPE", "threshold": 0.7}]}}, "unknown class"),
        ({"decision": {"thresholds": [{"class": "CRACK", "threshold": 0.99}]}}, "less than or equal to 0.95"),
        ({"decision": {"thresholds": [{"class": "CRACK", "tool": "AOI-77", "threshold": 0.7}]}}, "unknown tool"),
        ({"decision": {"bands": [{"pass": 0.2, "reject": 0.1}]}}, "pass must be below reject"),
        ({"tools": [{"id": "A"}, {"id": "A"}]}, "duplicate"),
        ({"recipes": {"R1": {"parameters": ["a", "b"]}}}, "48"),
        ({"station": "bad station name"}, "station"),
    ],
)
def test_cross_field_rules_are_checked_at_load(extra, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({**MINIMAL, **extra})


def test_check_config_command(tmp_path, capsys):
    good = tmp_path / "good.toml"
    good.write_text('station = "ST-9"\n[[tools]]\nid = "AOI-01"\n[recipes.R1]\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('[[tools]]\nid = "AOI-01"\n[recipes.R1]\n[mqtt]\nhots = "x"\n')
    assert main(["check-config", str(good)]) == 0
    assert "ST-9" in capsys.readouterr().out
    assert main(["check-config", str(bad)]) == 2
    assert "mqtt.hots" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "missing.toml")


def test_the_shipped_station_config_is_valid():
    cfg = load_config("systemd/edge.toml")
    assert cfg.mqtt.password_credential == "mqtt-password" and cfg.mqtt.password_env is None


def test_password_comes_from_environment_or_systemd_credential(tmp_path, monkeypatch):
    cfg = parse_config({**MINIMAL, "mqtt": {"password_env": "EDGE_PW", "password_credential": "pw"}}).mqtt
    monkeypatch.delenv("EDGE_PW", raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    (tmp_path / "pw").write_text("from-credential\n")
    assert cfg.password() == "from-credential"
    monkeypatch.setenv("EDGE_PW", "from-env")
    assert cfg.password() == "from-env"
