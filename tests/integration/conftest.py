"""Integration fixtures: a real tritonserver serving the assembled CPU model repository."""

from tests.triton_fixture import triton_server  # noqa: F401 - a fixture, used by name
