"""A real IMAP server for the bounce-mailbox tests: Debian's Dovecot (`dovecot-imapd`),
run as a private instance (its own configuration, directories and port on loopback,
plain-text login, any user with the password `secret`), stopped after the test.

As root it runs its login and internal processes as the package's `dovenull` and
`dovecot` users, as packaged; otherwise everything runs as the current user."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests import support

BINARY = "/usr/sbin/dovecot"
PASSWORD = "secret"
NOT_INSTALLED = "Dovecot is not installed (Debian: apt-get install dovecot-imapd)"


def installed() -> bool:
    return os.access(BINARY, os.X_OK)


def _config(directory: Path, port: int) -> str:
    if os.geteuid() == 0:
        login_user, internal_user, mail_user = "dovenull", "dovecot", "dovecot"
    else:
        login_user = internal_user = mail_user = getpass.getuser()
    return f"""
base_dir = {directory}/run
state_dir = {directory}/state
log_path = {directory}/dovecot.log
instance_name = newsletter-test-{port}
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_login_user = {login_user}
default_internal_user = {internal_user}
first_valid_uid = 0
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid={mail_user} gid={mail_user} home={directory}/home/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
"""


@contextlib.contextmanager
def running() -> Iterator[int]:
    """Starts a private Dovecot; yields its IMAP port."""
    directory = Path(tempfile.mkdtemp(prefix="newsletter-test-dovecot-"))
    directory.chmod(0o755)  # its login processes run as another user
    port = support.free_port()
    config = directory / "dovecot.conf"
    config.write_text(_config(directory, port))
    (directory / "home").mkdir()
    if os.geteuid() == 0:
        shutil.chown(directory / "home", "dovecot", "dovecot")
    subprocess.run([BINARY, "-c", str(config)], check=True, timeout=30)
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError):
                import socket

                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "Dovecot did not start: " + (directory / "dovecot.log").read_text()
                )
            time.sleep(0.05)
        yield port
    finally:
        subprocess.run([BINARY, "-c", str(config), "stop"], check=False, timeout=30)
        shutil.rmtree(directory, ignore_errors=True)
