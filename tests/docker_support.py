"""Docker for the tests: a daemon that answers, and the host-toolchain image built once.

No test may be skipped in CI, so an unreachable daemon fails every docker test with a
message that says how to start one, instead of quietly skipping them.
"""

from __future__ import annotations

from collections.abc import Iterator

import docker
import docker.errors
import pytest

from agents.sandbox.docker import LABEL_ROOT, LABEL_SANDBOX, LOCAL_IMAGE, build_local_image

START_DOCKERD = ("start dockerd first (as root: `dockerd --bridge=none --iptables=false "
                 "--ip-masq=false > /tmp/dockerd.log 2>&1 &`, then wait for "
                 "/var/run/docker.sock; `bash .ci/run` does this)")


def docker_client() -> docker.DockerClient:
    """A client for a daemon that answers, or a failed test saying how to get one."""
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException as exc:
        problem = str(exc)
    else:
        return client
    pytest.fail(f"docker is not reachable ({problem}): {START_DOCKERD}", pytrace=False)


@pytest.fixture(scope="session")
def docker_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The host-toolchain image, rebuilt once per session (the host's layout may change).

    At the end, any sandbox container a failed test left for a root under this session's
    temporary directory goes too.
    """
    client = docker_client()
    build_local_image(client, LOCAL_IMAGE)
    yield LOCAL_IMAGE
    base = str(tmp_path_factory.getbasetemp().resolve())
    for container in client.containers.list(all=True, filters={"label": f"{LABEL_SANDBOX}=1"}):
        if container.labels.get(LABEL_ROOT, "").startswith(base):
            container.remove(force=True)
