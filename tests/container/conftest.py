"""Container tests need podman and the local Debian base images.

`.ci/run` prepares them with ../shared/tools/container-env.sh and then sets
CTRL_EXEC_REQUIRE_CONTAINERS=1: from then on a missing podman or image is a
failure, not a skip. The only allowed skip is when that tool itself failed
(CTRL_EXEC_CONTAINER_ENV_FAILED names its log), and it is reported loudly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings

import pytest


def _skip_or_fail(reason: str) -> None:
    failed_log = os.environ.get("CTRL_EXEC_CONTAINER_ENV_FAILED")
    if os.environ.get("CTRL_EXEC_REQUIRE_CONTAINERS"):
        pytest.fail(f"containers are required here but {reason}")
    message = f"CONTAINER TESTS SKIPPED: {reason}"
    if failed_log:
        message += f" (container-env.sh failed, see {failed_log})"
    warnings.warn(message, stacklevel=2)
    pytest.skip(message)


@pytest.fixture(scope="session")
def podman() -> str:
    path = shutil.which("podman")
    if path is None:
        _skip_or_fail("podman is not installed (run ../shared/tools/container-env.sh trixie)")
    return path


def image_exists(podman: str, image: str) -> bool:
    return subprocess.run([podman, "image", "exists", image]).returncode == 0


@pytest.fixture(scope="session")
def base_image(podman):
    def need(suite: str) -> str:
        image = f"docker.io/library/debian:{suite}-slim"
        if not image_exists(podman, image):
            _skip_or_fail(f"{image} is missing (run ../shared/tools/container-env.sh {suite})")
        return image

    return need
