"""The ``[mqtt]`` section of the daemon's configuration (the broker, its credentials and TLS, the topics), and
the strict base every section shares: unknown keys are errors, values are frozen once loaded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

Port = Annotated[int, Field(ge=0, le=65535)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttConfig(Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 1883
    prefix: str = Field("fab/edge", description="topic prefix of everything the daemon publishes")
    client_id: str | None = Field(None, description="defaults to edge-{station}")
    persistent_session: bool = Field(
        True,
        description="the broker keeps the daemon's subscriptions and queues what arrives on them at QoS 1 "
        "(process logs, lot events, reviews, re-baselines) while the daemon is stopped or cut off, and hands it "
        "over when it connects again; needs a client_id no other client uses",
    )
    username: str | None = None
    password_env: str | None = Field(None, description="environment variable holding the password")
    password_credential: str | None = Field(
        None, description="systemd credential (LoadCredential=) holding the password"
    )
    keepalive_s: int = Field(30, gt=0)
    max_inflight: int = Field(64, gt=0, description="QoS 1 messages awaiting PUBACK")
    replay_acked_s: float = Field(
        5.0,
        ge=0,
        description="when the link to the broker drops, the events it acknowledged in this many seconds "
        "before its last acknowledgement are published again: a broker that dies loses what it had accepted but "
        "neither handed on nor saved (Mosquitto saves every autosave_interval seconds); 0 turns this off",
    )
    mes_process_topic: str = Field("fab/mes/process/#", description="where MES publishes wafer process logs")
    mes_lot_topic: str = Field("fab/mes/lot/#", description="where MES publishes lot_start / lot_end")
    tls: bool = Field(
        False,
        description="MQTT over TLS: the broker's certificate must chain to ca_file and name `host`",
    )
    ca_file: Path | None = Field(
        None,
        description="PEM file of the authorities trusted to sign the broker's certificate; null: the "
        "system's trust store",
    )
    cert_file: Path | None = Field(
        None,
        description="PEM client certificate the daemon presents to the broker; set with key_file",
    )
    key_file: Path | None = Field(None, description="PEM private key of cert_file; keep it readable by the daemon only")
    key_password_env: str | None = Field(None, description="environment variable holding key_file's passphrase")
    key_password_credential: str | None = Field(
        None,
        description="systemd credential (LoadCredential=) holding key_file's passphrase",
    )
    tls_insecure: bool = Field(
        False,
        description="skip only the check that the broker's certificate names `host` (the chain is still "
        "verified); for test benches, never on a station",
    )

    @model_validator(mode="after")
    def _tls_files(self) -> MqttConfig:
        if not self.tls:
            stray = [
                name
                for name in (
                    "ca_file",
                    "cert_file",
                    "key_file",
                    "key_password_env",
                    "key_password_credential",
                    "tls_insecure",
                )
                if getattr(self, name)
            ]
            if stray:
                raise ValueError(f"{', '.join(stray)}: take effect only with tls = true")
            return self
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        if self.key_file is None and (self.key_password_env or self.key_password_credential):
            raise ValueError("key_password_env / key_password_credential: there is no key_file to unlock")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: no such file: {path}")
        return self

    def password(self) -> str | None:
        """The secret, from the environment or a systemd credential; never stored in the config."""
        return self._secret(self.password_env, self.password_credential)

    def key_password(self) -> str | None:
        """key_file's passphrase, found the same way as the password; None for an unencrypted key."""
        return self._secret(self.key_password_env, self.key_password_credential)

    @staticmethod
    def _secret(env: str | None, credential: str | None) -> str | None:
        if env and env in os.environ:
            return os.environ[env]
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if credential and directory:
            path = Path(directory) / credential
            if path.is_file():
                return path.read_text().strip()
        return None
