"""conftest.py orders a worksteal run's collection in each xdist worker; a worker learns
the run's `--dist` from the controller's command line, since xdist sets its own to "no"."""

import pytest

from conftest import dist_of_run


@pytest.mark.parametrize(
    ("argv", "dist"),
    [
        (["pytest", "-n", "3", "--dist", "worksteal"], "worksteal"),
        (["pytest", "-n", "3", "--dist=worksteal", "-p", "tests.cpu_per_test"], "worksteal"),
        (["pytest", "-n", "2", "--dist", "loadgroup", "tests/topology"], "loadgroup"),
        (["pytest", "tests/unit"], "no"),
        (["pytest", "--dist"], "no"),
    ],
)
def test_the_run_s_dist_is_read_from_its_command_line(argv, dist):
    assert dist_of_run(argv) == dist
