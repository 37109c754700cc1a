"""Weight scratch folders: removed on close, and by the next run when their process was killed."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import forge_env._scratch as scratch
from forge_env._scratch import ScratchFolder, remove_orphans

_OWNER = """
import sys, time
from forge_env._scratch import ScratchFolder
folder = ScratchFolder.create("forge-env-weights-", sys.argv[1])
open(folder.path + "/model.safetensors", "wb").write(b"x" * 1024)
print(folder.path, flush=True)
time.sleep(600)
"""


def _owner(base: Path) -> tuple[subprocess.Popen[str], Path]:
    """A process that makes a scratch folder under ``base`` and lives on."""
    proc = subprocess.Popen([sys.executable, "-c", _OWNER, str(base)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_a_folder_is_locked_while_its_owner_lives_and_removed_once(tmp_path: Path) -> None:
    folder = ScratchFolder.create("forge-env-weights-", str(tmp_path))
    path = Path(folder.path)
    assert path.parent == tmp_path and path.name.startswith("forge-env-weights-")
    assert [p.name for p in path.iterdir()] == [".forge-env-owner"]   # no half-made marker left
    fd = os.open(path / ".forge-env-owner", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    assert remove_orphans(str(tmp_path)) == [] and path.is_dir()   # its owner (this process) lives
    folder.remove()
    folder.remove()
    assert not path.exists()


def test_only_folders_of_killed_owners_are_swept(tmp_path: Path) -> None:
    killed, killed_path = _owner(tmp_path)
    alive, alive_path = _owner(tmp_path)
    foreign = tmp_path / "forge-env-something"   # no marker: not made by a ScratchFolder
    foreign.mkdir()
    other = tmp_path / "other-weights"
    other.mkdir()
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert killed_path.is_dir()          # kill -9: nothing cleaned up by the owner
        assert remove_orphans(str(tmp_path)) == [str(killed_path)]
        assert not killed_path.exists()
        assert alive_path.is_dir() and (alive_path / "model.safetensors").is_file()
        assert foreign.is_dir() and other.is_dir()
    finally:
        alive.kill()
        alive.wait(timeout=30)
    assert remove_orphans(str(tmp_path)) == [str(alive_path)]


def test_a_new_default_folder_sweeps_the_default_base_but_a_named_base_is_left_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    named = tmp_path / "named"
    named.mkdir()
    owner, orphan_in_named = _owner(named)
    owner.kill()
    owner.wait(timeout=30)
    folder = ScratchFolder.create("forge-env-weights-", str(named))   # a base the user named
    assert orphan_in_named.is_dir()
    folder.remove()

    monkeypatch.setattr(scratch, "default_base", lambda: str(named))
    folder = ScratchFolder.create("forge-env-learner-")               # the default base
    try:
        assert not orphan_in_named.exists()
        assert Path(folder.path).parent == named
    finally:
        folder.remove()
