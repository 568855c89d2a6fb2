"""Config: strict keys, cross-field rules, and the check-config command."""

import json

import pytest

from edge import __version__
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
        ({"recipes": {"R1": {"parameters": ["a", "a"]}}}, "unique"),
        ({"recipes": {"R1": {"parameters": []}}}, "at least 1"),
        ({"station": "bad station name"}, "station"),
        ({"ingest": {"also_bind": ["udp://127.0.0.1:5000"]}}, "tcp://HOST:PORT or ipc://PATH"),
        ({"ingest": {"also_bind": ["tcp://127.0.0.1:5555"]}}, "repeats an intake address"),
    ],
)
def test_cross_field_rules_are_checked_at_load(extra, message):
    """(Any number of process parameters is a valid recipe: the served classifier's contract decides, at start.)"""
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


def curve_files(tmp_path):
    """A secret certificate and an authorized-keys directory that exist (content is the socket's concern)."""
    secret, keys = tmp_path / "ST-01.key_secret", tmp_path / "tools"
    secret.write_text("curve\n")
    keys.mkdir()
    return str(secret), str(keys)


@pytest.mark.parametrize("given", ["curve_secret_key_file", "curve_authorized_keys"])
def test_curve_keys_are_set_both_or_neither(tmp_path, given):
    secret, keys = curve_files(tmp_path)
    only = {"curve_secret_key_file": secret, "curve_authorized_keys": keys}[given]
    with pytest.raises(ConfigError, match="set both or neither"):
        parse_config({**MINIMAL, "ingest": {given: only}})
    cfg = parse_config({**MINIMAL, "ingest": {"curve_secret_key_file": secret, "curve_authorized_keys": keys}})
    assert str(cfg.ingest.curve_secret_key_file) == secret
    assert parse_config(MINIMAL).ingest.curve_secret_key_file is None  # CURVE is off by default


def test_a_missing_curve_key_file_or_directory_is_named(tmp_path):
    secret, keys = curve_files(tmp_path)
    missing = str(tmp_path / "gone.key_secret")
    with pytest.raises(ConfigError, match=r"curve_secret_key_file: no such file: .*gone\.key_secret"):
        parse_config({**MINIMAL, "ingest": {"curve_secret_key_file": missing, "curve_authorized_keys": keys}})
    with pytest.raises(ConfigError, match=r"curve_authorized_keys: no such directory: .*nowhere"):
        parse_config(
            {**MINIMAL, "ingest": {"curve_secret_key_file": secret, "curve_authorized_keys": str(tmp_path / "nowhere")}}
        )


def tls_files(tmp_path) -> dict[str, str]:
    """Stand-ins for the PEM files: validation checks that they exist; loading them is MqttLink's job."""
    paths = {}
    for key in ("ca_file", "cert_file", "key_file"):
        path = tmp_path / f"{key}.pem"
        path.write_text("-----BEGIN PLACEHOLDER-----\n")
        paths[key] = str(path)
    return paths


def test_mqtt_tls_is_off_by_default_and_its_keys_need_it_on(tmp_path):
    assert parse_config(MINIMAL).mqtt.tls is False
    files = tls_files(tmp_path)
    cfg = parse_config({**MINIMAL, "mqtt": {"tls": True, **files}}).mqtt
    assert (str(cfg.ca_file), str(cfg.cert_file), str(cfg.key_file)) == tuple(files.values())
    assert cfg.tls_insecure is False
    with pytest.raises(ConfigError, match=r"mqtt: .*cert_file, key_file: take effect only with tls = true"):
        parse_config({**MINIMAL, "mqtt": {"cert_file": files["cert_file"], "key_file": files["key_file"]}})
    with pytest.raises(ConfigError, match="tls_insecure: take effect only with tls = true"):
        parse_config({**MINIMAL, "mqtt": {"tls_insecure": True}})
    with pytest.raises(ConfigError, match=r"mqtt\.tls_version"):  # unknown keys stay errors
        parse_config({**MINIMAL, "mqtt": {"tls": True, "tls_version": "1.3"}})


@pytest.mark.parametrize("given", ["cert_file", "key_file"])
def test_mqtt_client_certificate_and_key_are_set_both_or_neither(tmp_path, given):
    files = tls_files(tmp_path)
    with pytest.raises(ConfigError, match=r"mqtt: .*cert_file and key_file go together: set both or neither"):
        parse_config({**MINIMAL, "mqtt": {"tls": True, given: files[given]}})
    assert parse_config({**MINIMAL, "mqtt": {"tls": True, "ca_file": files["ca_file"]}}).mqtt.cert_file is None


@pytest.mark.parametrize("key", ["ca_file", "cert_file", "key_file"])
def test_a_missing_mqtt_tls_file_is_named(tmp_path, key):
    files = {**tls_files(tmp_path), key: str(tmp_path / "gone.pem")}
    with pytest.raises(ConfigError, match=rf"mqtt: .*{key}: no such file: .*gone\.pem"):
        parse_config({**MINIMAL, "mqtt": {"tls": True, **files}})


def test_a_key_passphrase_needs_a_key_file(tmp_path):
    with pytest.raises(ConfigError, match="no key_file to unlock"):
        parse_config({**MINIMAL, "mqtt": {"tls": True, "key_password_env": "EDGE_KEY_PW"}})


def test_mqtt_secrets_are_read_when_needed_and_never_held_by_the_config(tmp_path, monkeypatch):
    mqtt = {
        "tls": True,
        **tls_files(tmp_path),
        "username": "edge-st01",
        "password_env": "EDGE_PW",
        "key_password_env": "EDGE_KEY_PW",
        "key_password_credential": "key-pw",
    }
    cfg = parse_config({**MINIMAL, "mqtt": mqtt})
    monkeypatch.delenv("EDGE_KEY_PW", raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    (tmp_path / "key-pw").write_text("phrase-from-credential\n")
    assert cfg.mqtt.key_password() == "phrase-from-credential"
    monkeypatch.setenv("EDGE_PW", "password-from-env")
    monkeypatch.setenv("EDGE_KEY_PW", "phrase-from-env")
    assert (cfg.mqtt.password(), cfg.mqtt.key_password()) == ("password-from-env", "phrase-from-env")
    for shown in (repr(cfg), str(cfg), repr(cfg.mqtt), cfg.model_dump_json()):
        assert "password-from-env" not in shown and "phrase-from" not in shown
    assert parse_config({**MINIMAL, "mqtt": {"tls": True}}).mqtt.key_password() is None


def test_check_config_reads_the_key_material_it_names(tmp_path, capsys):
    """A CA file that is no certificate, or a CURVE secret that is no key, fails the check (not the start
    after the models loaded), and the message names the key without quoting the file."""
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    tls = tmp_path / "tls.toml"
    tls.write_text(f'[[tools]]\nid = "AOI-01"\n[recipes.R1]\n[mqtt]\ntls = true\nca_file = "{junk}"\n')
    assert main(["check-config", str(tls)]) == 2
    err = capsys.readouterr().err
    assert "ca_file" in err and "not a certificate" not in err
    keys = tmp_path / "keys"
    keys.mkdir()
    secret = tmp_path / "station.key_secret"
    secret.write_text("secret-key-material-that-is-no-key\n")
    secret.chmod(0o600)
    curve = tmp_path / "curve.toml"
    curve.write_text(
        f'[[tools]]\nid = "AOI-01"\n[recipes.R1]\n[ingest]\ncurve_secret_key_file = "{secret}"\n'
        f'curve_authorized_keys = "{keys}"\n'
    )
    assert main(["check-config", str(curve)]) == 2
    err = capsys.readouterr().err
    assert "station.key_secret" in err and "secret-key-material" not in err


def test_the_retry_hint_ceiling_is_not_under_its_floor():
    with pytest.raises(ConfigError, match="busy_retry_max_ms must be at least busy_retry_after_ms"):
        parse_config({**MINIMAL, "ingest": {"busy_retry_after_ms": 500, "busy_retry_max_ms": 100}})


def test_check_config_as_json_and_the_version(tmp_path, capsys):
    good = tmp_path / "good.toml"
    good.write_text('station = "ST-9"\n[[tools]]\nid = "AOI-01"\n[recipes.R1]\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('[[tools]]\nid = "AOI-01"\n[recipes.R1]\n[mqtt]\nhots = "x"\n')
    assert main(["check-config", "--json", str(good)]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "ok": True,
        "file": str(good),
        "station": "ST-9",
        "tools": ["AOI-01"],
        "recipes": ["R1"],
    }
    assert main(["check-config", "--json", str(bad)]) == 2
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["ok"] is False and "mqtt.hots" in verdict["error"]
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"edge-inspect {__version__}"
