"""A model's config.pbtxt as text (pure): its string parameters, and the model-level config Triton reads.

Each version of a model keeps its own config (``<model>/<N>/config.pbtxt``: tensors, batching, and the facts it
declares as string parameters). Triton reads only the model-level ``<model>/config.pbtxt``: the newest version's own
config with a ``version_facts`` parameter beside it holding every version's facts (JSON, by version), so the daemon
reads each served version's digest, bands and contract from Triton. It names no version to serve: which versions
Triton loads is which version folders it finds (``edge.models.repository``), so a change of versions leaves this text
alone and Triton loads or unloads those versions only, never reloading the ones that stay.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

VERSION_FACTS = "version_facts"
_PARAMETER = re.compile(r'parameters \{ key: "([^"]+)", value: \{ string_value: "((?:[^"\\]|\\.)*)" \} \}')
_POLICY = re.compile(r"^version_policy[^\n]*\n?", re.MULTILINE)
SERVE_ALL = "version_policy: { all: {} }"
OPTIONAL_OUTPUTS = ("EMBEDDING",)  # outputs a version may lack (model_repository/README.md)


def _string(value: float | str) -> str:
    """A parameter value as a protobuf text string literal: floats by repr, text with quotes and backslashes escaped."""
    text = repr(value) if isinstance(value, float) else " ".join(str(value).split())
    return text.replace("\\", "\\\\").replace('"', '\\"')


def config_text(base: str, parameters: Mapping[str, float | str]) -> str:
    """``base`` config.pbtxt text with one ``parameters`` entry appended per item (Triton wants string values)."""
    lines = [base.rstrip("\n")]
    for key, value in parameters.items():
        lines.append(f'parameters {{ key: "{key}", value: {{ string_value: "{_string(value)}" }} }}')
    return "\n".join(lines) + "\n"


def config_parameters(text: str) -> dict[str, str]:
    """The string parameters of config.pbtxt text, unescaped (as Triton hands them over): ``config_text``'s inverse."""
    return {key: re.sub(r"\\(.)", r"\1", value) for key, value in _PARAMETER.findall(text)}


def without_parameters(text: str, keys: Sequence[str]) -> str:
    """``text`` less the parameter entries (one per line, as ``config_text`` writes them) named by ``keys``."""
    kept = [
        line for line in text.splitlines()
        if not ((m := _PARAMETER.search(line)) and m.group(1) in keys)
    ]  # fmt: skip
    return "\n".join(kept) + "\n"


def without_output(text: str, name: str) -> str:
    """``text`` less the output entry ``name`` (one ``{ name: ... }`` line, as the repository's configs write them)."""
    stripped = re.sub(rf'\n[ \t]*\{{ name: "{re.escape(name)}"[^\n]*', "", text)
    return re.sub(r",(\s*\n\])", r"\1", stripped)


def declares_output(text: str, name: str) -> bool:
    return re.search(rf'\{{ name: "{re.escape(name)}"', text) is not None


def shared_outputs(own: str, others: Sequence[str]) -> str:
    """``own`` less the optional outputs (``OPTIONAL_OUTPUTS``) some version's config in ``others`` does not declare:
    one config serves every version of a view, and a version cannot serve an output its graph lacks (a classifier
    built before it had an embedding)."""
    for name in OPTIONAL_OUTPUTS:
        if declares_output(own, name) and not all(declares_output(other, name) for other in others):
            own = without_output(own, name)
    return own


def own_config(model_level: str) -> str:
    """A version's own config recovered from a model-level config (a repository built before versions kept their
    own): the composed parts taken out."""
    return _POLICY.sub("", without_parameters(model_level, (VERSION_FACTS,)))


def compose(own: str, facts: Mapping[int, Mapping[str, str]], serve_all: bool) -> str:
    """The model-level config: ``own`` (the newest version's own config) and the ``version_facts`` of every version in
    ``facts``; ``serve_all``: Triton serves every version folder it finds (a served view), else its default, the
    newest."""
    text = own_config(own).rstrip("\n") + "\n"
    if serve_all:
        text += SERVE_ALL + "\n"
    table = {str(v): dict(f) for v, f in sorted(facts.items())}
    return config_text(text, {VERSION_FACTS: json.dumps(table, separators=(",", ":"), sort_keys=True)})


def facts_for(parameters: Mapping[str, str], version: str) -> dict[str, str]:
    """What ``version`` declares, from the model-level parameters Triton reports: its entry in ``version_facts``,
    else (a repository without them) the plain parameters."""
    try:
        table = json.loads(parameters.get(VERSION_FACTS, "{}"))
    except json.JSONDecodeError:
        table = {}
    own = table.get(version) if isinstance(table, dict) else None
    if isinstance(own, dict):
        return {str(k): str(v) for k, v in own.items()}
    return {k: v for k, v in parameters.items() if k != VERSION_FACTS}
