"""The executor's plan for a profile with `writable`: it mounts a private
tmpfs on /tmp, so what the profile names under /tmp cannot be applied and is
refused with the reason, before any fork."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ctrlexec.errors import ProfileError
from ctrlexec.executor import privdrop


def _decision(path: str, writable: tuple[str, ...]):
    return SimpleNamespace(
        path=path,
        caps=(),
        identity=SimpleNamespace(uid=65534, gid=65534, groups=(65534,)),
        writable=writable,
        protected=(),
        no_new_privileges=True,
    )


def test_a_script_under_tmp_with_a_writable_profile_is_refused_with_the_reason():
    with pytest.raises(ProfileError) as refused:
        privdrop.plan_for(_decision("/tmp/site/backup", ("/srv/out",)))
    assert "/tmp/site/backup is under /tmp" in str(refused.value)
    assert "install the script outside /tmp" in str(refused.value)


def test_a_writable_path_under_tmp_is_refused_rather_than_silently_dropped():
    with pytest.raises(ProfileError) as refused:
        privdrop.plan_for(_decision("/opt/scripts/backup", ("/srv/out", "/tmp/spool")))
    assert "writable path /tmp/spool is under /tmp" in str(refused.value)


@pytest.mark.parametrize(
    ("path", "writable"),
    [
        ("/tmp/site/backup", ()),  # no writable: no private /tmp, the script is in view
        ("/opt/scripts/backup", ("/tmp",)),  # /tmp itself: the private tmpfs is writable
        ("/opt/scripts/backup", ("/srv/out", "/var/tmp/spool")),
        ("/tmpfiles/backup", ("/tmpdata",)),  # only the directory /tmp, not a prefix
    ],
)
def test_what_the_private_tmp_does_not_hide_is_planned(path, writable):
    plan = privdrop.plan_for(_decision(path, writable))
    assert plan.executable == path
