"""The ZeRO-3 scaling model's arithmetic, checked by hand-computed numbers."""

from __future__ import annotations

import math

import pytest

from natscale.bench.scaling import (
    Network,
    ZeroWorkload,
    calibrate_bandwidth,
    comm_time,
    compute_time,
    project,
    step_time,
)

NET = Network("t", devices_per_node=4, intra_bw=100.0, inter_bw=10.0, latency_s=0.5)
W = ZeroWorkload(params=100, num_layers=2, tokens_per_device_step=1000, grad_accum=1)


def test_comm_time_by_hand():
    assert comm_time(W, NET, 1) == pytest.approx(6 * 100 * 3 / 4 / 100 + 3 * 2 * 3 * 0.5)
    # 2 nodes x 4 devices: NVLink part, half the buffer over the node's 4 NICs, 7 hops
    expected = 6 * 100 * 3 / 4 / 100 + 6 * 100 / 2 / (4 * 10) + 3 * 2 * 7 * 0.5
    assert comm_time(W, NET, 2) == pytest.approx(expected)
    one = Network("1", 1, 1.0, 1.0, 0.0)
    assert comm_time(W, one, 1) == 0.0
    assert comm_time(W, NET, 2, grad_accum=3) == pytest.approx(3 * comm_time(W, NET, 2))


def test_overlap_and_its_inverse():
    assert step_time(10.0, 4.0, 0.5) == 10.0  # hidden under half the compute
    assert step_time(10.0, 8.0, 0.5) == 13.0
    for t_c, t_comm, f in [(10.0, 4.0, 0.5), (10.0, 8.0, 0.5), (3.0, 7.0, 0.0)]:
        assert compute_time(step_time(t_c, t_comm, f), t_comm, f) == pytest.approx(t_c)
    with pytest.raises(ValueError, match="shorter than"):
        compute_time(1.0, 2.0, 0.0)


def test_weak_scaling_projection():
    rows = project(W, NET, 20.0, nodes=(1, 2, 4))
    t_c = compute_time(20.0, comm_time(W, NET, 1), 0.0)
    assert rows[0]["efficiency"] == 1.0 and rows[0]["step_s"] == pytest.approx(20.0)
    for r in rows:
        assert r["step_s"] == pytest.approx(t_c + comm_time(W, NET, r["nodes"]))
        assert r["tokens_per_s_per_device"] == pytest.approx(1000 / r["step_s"])
    assert rows[0]["efficiency"] > rows[1]["efficiency"] > rows[2]["efficiency"] > 0


def test_strong_scaling_divides_the_work():
    w = ZeroWorkload(params=100, num_layers=2, tokens_per_device_step=800, grad_accum=8)
    no_comm = Network("free", 1, math.inf, math.inf, 0.0)
    rows = project(w, no_comm, 16.0, nodes=(1, 2, 8), mode="strong")
    assert [r["step_s"] for r in rows] == pytest.approx([16.0, 8.0, 2.0])
    assert [r["efficiency"] for r in rows] == pytest.approx([1.0, 1.0, 1.0])


def test_calibration_reproduces_the_two_measurements():
    t_1, t_2 = 2.0, 2.6
    net = calibrate_bandwidth(W, t_1, t_2, latency_s=0.01)
    assert net.devices_per_node == 1
    rows = project(W, net, t_1, nodes=(1, 2))
    assert rows[1]["step_s"] == pytest.approx(t_2)
    with pytest.raises(ValueError, match="nothing to fit"):
        calibrate_bandwidth(W, 2.0, 1.9)
