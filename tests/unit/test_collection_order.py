"""conftest.py orders a worksteal run's collection in each xdist worker; a worker learns
the run's `--dist` from the controller's command line, since xdist sets its own to "no"."""

import pytest

from conftest import LONG_TESTS, dist_of_run, long_group


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


@pytest.mark.parametrize(
    ("nodeid", "prefix"),
    [
        ("e2e/test_accessibility.py::test_axe_finds_a_missing_label", "e2e/"),
        ("e2e/test_keyboard.py::test_x", "e2e/"),
        # It runs without the browser group's job worker: a group of its own.
        ("e2e/test_live_behind_haproxy.py::test_x", "e2e/test_live_behind_haproxy.py::"),
        ("tests/integration/test_fuzz_api.py::test_x", "tests/integration/test_fuzz_api.py::"),
    ],
)
def test_a_long_test_is_in_the_group_meant_for_it(nodeid, prefix):
    group = long_group(nodeid)
    assert group is not None and LONG_TESTS[group][1] == (prefix,)


def test_a_test_in_no_group_has_none():
    assert long_group("tests/unit/test_collection_order.py::test_x") is None
