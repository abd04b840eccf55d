"""Shared fixtures: the dev photos, one local Ray per session, a real S3 server on loopback."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Fake credentials for the loopback S3 server, set before any Ray worker starts so that the
# workers inherit them, as they inherit real credentials (env, profile or IAM role) in production.
for _k, _v in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
    os.environ.setdefault(_k, _v)
DEV = ROOT.parent / "shared" / "data" / "pennfudan-dev"


@pytest.fixture(scope="session")
def dev_dir() -> Path:
    if not (DEV / "images").is_dir():
        pytest.skip(f"dev photos not found at {DEV} (../shared/data/pennfudan-dev beside the repo)")
    return DEV


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (2 CPUs, like CI)."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 at a free port; s3fs talks HTTP to it like to AWS."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    yield endpoint
    server.stop()


@pytest.fixture
def s3fs_client(s3_server):
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return s3fs.S3FileSystem(endpoint_url=s3_server, key="testing", secret="testing")
