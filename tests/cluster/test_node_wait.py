"""The check behind waiting for a node on a joined cluster, on the test session's real cluster.

The whole behaviour (a sweep on a joined cluster whose nodes are too small waits with a
progress line, and runs once a large enough node joins) is
``test_multinode.py::test_a_trial_no_node_can_hold_waits_saying_what_is_missing_until_one_joins``.
"""

from __future__ import annotations

import logging

from hrtem_ray.cluster.runtime import largest_node, missing_node_line, node_fits, wait_for_node


def test_a_trial_that_fits_does_not_wait(ray_cluster, caplog):
    with caplog.at_level(logging.INFO, logger="hrtem_ray"):
        assert wait_for_node(1, 0) < 1.0
    assert not [r for r in caplog.records if "waiting for a node" in r.getMessage()]


def test_the_progress_line_names_what_is_needed_and_what_is_there(ray_cluster):
    nodes = ray_cluster.nodes()
    assert largest_node(nodes) == (2.0, 0.0)  # the session cluster: 2 CPUs, no GPU
    assert node_fits(nodes, 2, 0) and not node_fits(nodes, 3, 0) and not node_fits(nodes, 1, 1)
    line = missing_node_line(nodes, 1000, 0.5, 12.0)
    assert line.startswith("waiting for a node with 1000 CPU and 0.5 GPU for one trial")
    assert "for 12 s: the largest of the 1 alive nodes has 2 CPU and 0 GPU" in line
    dead = [{**node, "Alive": False} for node in nodes]
    assert largest_node(dead) == (0.0, 0.0) and not node_fits(dead, 1, 0)
