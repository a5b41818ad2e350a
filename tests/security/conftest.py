"""The hostile suite runs against docker too: its fixtures come from tests/docker_support."""

from tests.docker_support import docker_image  # noqa: F401  (a fixture, used by name)
