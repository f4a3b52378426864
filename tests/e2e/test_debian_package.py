"""The .deb (`make deb`) and the tarball's install.sh, installed into a scratch root.

dpkg installs for real, with its own database, conffile handling and the package's maintainer
scripts, into a folder instead of this machine's `/`: `dpkg --root=DIR --force-script-chrootless`
runs the scripts on this host with DPKG_ROOT=DIR (the scripts honour it, as Debian's own packages
do for chrootless bootstrapping), so the user and folders land in DIR's /etc/passwd and /var. The
scratch root is not a Debian system: its dpkg database holds only the host's libc6 record, so
`Depends: libc6` is checked against the libc this host really has. systemd is not PID 1 here, so
the unit is checked with systemd-analyze, not started.
"""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

import binary_build
from binary_build import REPO

# The binary may be built in this module's setup (minutes on 2 cores): the limit covers that.
pytestmark = pytest.mark.timeout(binary_build.BUILD_TIMEOUT_S + 600)

PACKAGING = REPO / "packaging"


def run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def deb(cynode_binary, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    path = run(str(PACKAGING / "deb" / "build.sh"), str(cynode_binary), str(out)).stdout.strip().splitlines()[-1]
    return Path(path)


def scratch_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    admin = root / "var" / "lib" / "dpkg"
    for folder in ("info", "updates", "triggers"):
        (admin / folder).mkdir(parents=True)
    libc = run("dpkg-query", "--status", "libc6").stdout
    arch = run("dpkg", "--print-architecture").stdout.strip()
    (admin / "status").write_text(libc.rstrip("\n") + "\n\n")
    (admin / f"libc6:{arch}.list").touch()
    (admin / "available").touch()
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    return root


def dpkg(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run("dpkg", f"--root={root}", "--force-script-chrootless", "--force-confold", *args)


def passwd_entry(root: Path, name: str) -> list[str] | None:
    for line in (root / "etc" / "passwd").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":")
    return None


def test_the_deb_installs_with_user_folders_unit_and_config(deb, cynode_binary, tmp_path):
    root = scratch_root(tmp_path)
    dpkg(root, "-i", str(deb))
    status = run("dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Status} ${Version}", "cynode").stdout
    assert status.startswith("install ok installed 0.")

    binary = root / "usr" / "bin" / "cynode"
    assert binary.stat().st_mode & 0o777 == 0o755
    assert filecmp.cmp(binary, cynode_binary, shallow=False), "the package holds the binary make built"

    user = passwd_entry(root, "cynode")
    assert user is not None and user[5] == "/var/lib/cynode" and user[6] == "/usr/sbin/nologin"
    uid, gid = int(user[2]), int(user[3])
    assert uid < 1000, "a system user"
    for folder, owner, mode in (("var/lib/cynode", uid, 0o750), ("var/cache/cynode", uid, 0o750), ("etc/cynode", 0, 0o750)):
        info = (root / folder).stat()
        assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (owner, gid, mode), folder
    assert (root / "etc" / "cynode" / "node.toml").read_text() == (PACKAGING / "node.toml").read_text()
    assert run("dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Conffiles}", "cynode").stdout.split()[0] \
        == "/etc/cynode/node.toml"

    unit = root / "lib" / "systemd" / "system" / "cynode.service"
    # The unit as installed; ExecStart must name an executable, so point it at the installed copy.
    check = tmp_path / "cynode.service"
    check.write_text(unit.read_text().replace("ExecStart=/usr/bin/cynode", f"ExecStart={binary}"))
    result = subprocess.run(["systemd-analyze", "verify", str(check)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ExecStart=/usr/bin/cynode run -c /etc/cynode/node.toml" in unit.read_text()


def test_a_changed_config_survives_a_reinstall_and_an_upgrade(deb, cynode_binary, tmp_path):
    root = scratch_root(tmp_path)
    dpkg(root, "-i", str(deb))
    config = root / "etc" / "cynode" / "node.toml"
    changed = config.read_text() + "\n# the operator was here\n"
    config.write_text(changed)

    dpkg(root, "-i", str(deb))  # the same package again
    assert config.read_text() == changed

    # A newer version whose default config differs: dpkg keeps the operator's (--force-confold, as an
    # unattended upgrade would) and puts the new default beside it.
    newer_tree = tmp_path / "newer"
    shutil.copytree(PACKAGING / "deb", newer_tree / "packaging" / "deb")
    for name in ("cynode.service", "node.toml", "grafana"):
        source = PACKAGING / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, newer_tree / "packaging" / name)
    (newer_tree / "node").mkdir()
    shutil.copy(REPO / "node" / "__init__.py", newer_tree / "node" / "__init__.py")
    shutil.copytree(REPO / "docs", newer_tree / "docs")
    shutil.copy(REPO / "README.md", newer_tree / "README.md")
    (newer_tree / "packaging" / "node.toml").write_text((PACKAGING / "node.toml").read_text() + "\n# a new default\n")
    version = run("dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Version}", "cynode").stdout + "+next1"
    newer = run(str(newer_tree / "packaging" / "deb" / "build.sh"), str(cynode_binary), str(tmp_path / "out"), version)
    dpkg(root, "-i", newer.stdout.strip().splitlines()[-1])
    assert run("dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Version}", "cynode").stdout == version
    assert config.read_text() == changed
    assert (root / "etc" / "cynode" / "node.toml.dpkg-dist").read_text().endswith("# a new default\n")
    assert passwd_entry(root, "cynode") is not None and sum(
        line.startswith("cynode:") for line in (root / "etc" / "passwd").read_text().splitlines()) == 1

    # Purge takes the package's files and state away; the system user stays, as Debian leaves them.
    (root / "var" / "lib" / "cynode" / "cluster.key").write_text("made on the first start\n")
    dpkg(root, "--purge", "cynode")
    assert not (root / "usr" / "bin" / "cynode").exists() and not config.exists()
    assert not (root / "var" / "lib" / "cynode").exists()
    assert passwd_entry(root, "cynode") is not None


def test_install_sh_from_the_tarball_does_the_same_and_keeps_a_changed_config(cynode_binary, tmp_path):
    run("make", "-C", str(REPO), "tarball")
    tarball = next((REPO / "dist").glob("cynode-*-linux-*.tar.gz"))
    with tarfile.open(tarball) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    folder = next((tmp_path / "unpacked").iterdir())
    root = scratch_root(tmp_path)

    first = run(str(folder / "install.sh"), "--root", str(root))
    assert "wrote the default /etc/cynode/node.toml" in first.stdout
    assert (root / "usr" / "local" / "bin" / "cynode").stat().st_mode & 0o111
    unit = (root / "etc" / "systemd" / "system" / "cynode.service").read_text()
    assert "ExecStart=/usr/local/bin/cynode run -c /etc/cynode/node.toml" in unit
    user = passwd_entry(root, "cynode")
    assert user is not None and (root / "var" / "lib" / "cynode").stat().st_uid == int(user[2])

    config = root / "etc" / "cynode" / "node.toml"
    config.write_text(config.read_text() + "\n# the operator was here\n")
    again = run(str(folder / "install.sh"), "--root", str(root))
    assert config.read_text().endswith("# the operator was here\n")
    assert "kept your /etc/cynode/node.toml" in again.stdout
    assert (root / "etc" / "cynode" / "node.toml.new").read_text() == (PACKAGING / "node.toml").read_text()

    check = tmp_path / "cynode.service"
    check.write_text(unit.replace("ExecStart=/usr/local/bin/cynode", f"ExecStart={root}/usr/local/bin/cynode"))
    result = subprocess.run(["systemd-analyze", "verify", str(check)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
