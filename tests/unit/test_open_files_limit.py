"""`medbook serve` lifts the open-files limit its server processes inherit: every
websocket is a descriptor, and a soft limit of 1,024 caps a process near 1,000 sockets."""

import resource
import subprocess
import sys

SCRIPT = """
import resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
from app.cli import _raise_open_files_limit
_raise_open_files_limit()
print(*resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert [int(v) for v in out] == [hard, hard]
