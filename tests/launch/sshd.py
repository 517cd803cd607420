"""A private sshd on 127.0.0.1 for the pdsh path: our own keys, our own port, our own process.

pdsh and DeepSpeed call plain ``ssh HOST ...``; a wrapper named ``ssh`` first on PATH adds
``-F`` with a config that sends every host to this sshd with the test's key. Nothing listens
beyond loopback, and the daemon (started by this module, pid known) is stopped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from natscale.train.dist import free_port

SSHD_CONFIG = """\
ListenAddress 127.0.0.1
Port {port}
HostKey {dir}/host_key
AuthorizedKeysFile {dir}/authorized_keys
PidFile {dir}/sshd.pid
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
"""
SSH_CONFIG = """\
Host *
  Port {port}
  IdentityFile {dir}/id_key
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
"""


@contextlib.contextmanager
def loopback_sshd(directory: Path) -> Iterator[Path]:
    """Run sshd on a free 127.0.0.1 port; yield a directory to put first on PATH (its ``ssh``)."""
    sshd, ssh, keygen = (
        shutil.which(t) or shutil.which(t, path="/usr/sbin") for t in ("sshd", "ssh", "ssh-keygen")
    )
    if not (sshd and ssh and keygen and shutil.which("pdsh")):
        pytest.skip("needs pdsh, ssh and sshd (apt-get install pdsh openssh-server)")
    directory.mkdir(parents=True, exist_ok=True)
    for key in ("host_key", "id_key"):
        subprocess.run(
            [keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(directory / key)], check=True
        )
    shutil.copy(directory / "id_key.pub", directory / "authorized_keys")
    port = free_port()
    (directory / "sshd_config").write_text(SSHD_CONFIG.format(port=port, dir=directory))
    (directory / "ssh_config").write_text(SSH_CONFIG.format(port=port, dir=directory))
    bin_dir = directory / "bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {ssh} -F {directory}/ssh_config "$@"\n')
    wrapper.chmod(0o755)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    log = (directory / "sshd.log").open("wb")
    proc = subprocess.Popen(
        [sshd, "-D", "-e", "-f", str(directory / "sshd_config")], stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            probe = subprocess.run(
                [str(wrapper), "-o", "BatchMode=yes", "127.0.0.1", "true"],
                capture_output=True,
                timeout=20,
            )
            if probe.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(
                    f"could not start a loopback sshd: {(directory / 'sshd.log').read_text()[-500:]}"
                )
            time.sleep(0.3)
        yield bin_dir
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
