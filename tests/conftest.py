"""Shared fixtures. Tests are offline: the hub is refused and everything is seeded."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:  # pragma: no cover
        pass
    yield


@pytest.fixture
def workspace(tmp_path):
    from shopsight.behavior.workspace import Workspace

    return Workspace(tmp_path / "ws")


_real_connect = __import__("socket").socket.connect


def _loopback_only_connect(self, address):
    """Refuse any connection that is not to this machine: tests must never reach a hub or API."""
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and not (
        host.startswith("127.") or host in ("localhost", "::1", "0.0.0.0") or host.startswith("/")
    ):
        raise ConnectionRefusedError(f"tests are offline: refused a connection to {address!r}")
    return _real_connect(self, address)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    import socket

    monkeypatch.setattr(socket.socket, "connect", _loopback_only_connect)
    yield


@pytest.fixture(scope="module")
def spark():
    """A SparkSession per test module (local[2], 4 shuffle partitions, bound to 127.0.0.1), stopped after it."""
    from shopsight.behavior.spark import spark_session

    session = spark_session("local[2]", conf={"spark.sql.shuffle.partitions": "4"})
    yield session
    session.stop()
