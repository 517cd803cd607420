"""A calibrated model of ZeRO-3 step time over nodes (pure Python, no torch).

Per optimizer step and device, ZeRO-3 moves, for every micro-batch, the full parameter set twice
by all-gather (forward, and backward since parameters are released after their forward) and the
full gradient once by reduce-scatter. Collectives are hierarchical (NCCL rings with one NIC per
device): inside a node each device moves (g-1)/g of the buffer over NVLink; across n nodes each
node receives (n-1)/n of it, spread over its g NICs. A ring pays the per-hop latency W-1 times
per collective, and DeepSpeed issues about one collective per layer and pass::

    V        = grad_accum * (gathers * param_bytes + grad_bytes) * P       (bytes per step)
    t_comm   = V * (g-1)/g / intra_bw + V * (n-1)/n / (g * inter_bw)
             + grad_accum * (gathers + 1) * num_layers * (W-1) * latency    (W = n * g)
    t_step   = t_compute + max(0, t_comm - overlap * t_compute)

``t_compute`` is solved from a measured (or stated) single-node step ``t_1`` with the same
formula. Weak scaling keeps the per-device batch (tokens/s/device = tokens_per_device / t_step);
strong scaling keeps the global batch, so compute per device and gradient-accumulation rounds
shrink with the device count. Efficiency = tokens/s/device(n) / tokens/s/device(1 node).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

NODES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class Network:
    name: str
    devices_per_node: int
    intra_bw: float  # bytes/s per device inside a node (collective bus bandwidth)
    inter_bw: float  # bytes/s per device between nodes
    latency_s: float  # per ring hop


@dataclass(frozen=True)
class ZeroWorkload:
    params: int
    num_layers: int
    tokens_per_device_step: float
    grad_accum: int = 1
    param_bytes: int = 2  # bf16 gathers
    grad_bytes: int = 2  # bf16 reduce-scatter
    gathers: int = 2  # forward + backward
    overlap: float = 0.0  # fraction of compute time that hides communication, in [0, 1)


# stated interconnects; every projection prints the one it used
NETWORKS = {
    # 8 GPUs/node, NVLink 4 (~360 GB/s achievable bus bandwidth), one 400 Gb/s NIC per GPU at 80%
    "h100-ib400": Network("h100-ib400", 8, 360e9, 0.8 * 400e9 / 8, 10e-6),
    # same nodes behind 100 Gb/s Ethernet per GPU
    "h100-eth100": Network("h100-eth100", 8, 360e9, 0.8 * 100e9 / 8, 20e-6),
}


def comm_time(w: ZeroWorkload, net: Network, nodes: int, *, grad_accum: int | None = None) -> float:
    """Seconds of ZeRO-3 communication per step and device on ``nodes`` nodes."""
    world = nodes * net.devices_per_node
    if world <= 1:
        return 0.0
    ga = w.grad_accum if grad_accum is None else grad_accum
    g = net.devices_per_node
    volume = ga * (w.gathers * w.param_bytes + w.grad_bytes) * w.params
    t = volume * (g - 1) / g / net.intra_bw if g > 1 else 0.0
    if nodes > 1:
        t += volume * (nodes - 1) / nodes / (g * net.inter_bw)
    collectives = ga * (w.gathers + 1) * w.num_layers
    return t + collectives * (world - 1) * net.latency_s


def step_time(t_compute: float, t_comm: float, overlap: float) -> float:
    return t_compute + max(0.0, t_comm - overlap * t_compute)


def compute_time(t_1: float, t_comm_1: float, overlap: float) -> float:
    """Invert ``step_time`` for the single-node measurement."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if t_comm_1 <= overlap * t_1:
        return t_1  # communication fully hidden
    t_c = (t_1 - t_comm_1) / (1.0 - overlap)
    if t_c <= 0:
        raise ValueError(
            f"the measured step ({t_1:.4g} s) is shorter than its modelled communication "
            f"({t_comm_1:.4g} s): the network assumption is too slow for this measurement"
        )
    return t_c


def project(
    w: ZeroWorkload, net: Network, t_1: float, *, nodes: tuple[int, ...] = NODES, mode: str = "weak"
) -> list[dict[str, float]]:
    """tokens/s/device and efficiency on each node count, from the single-node step ``t_1``."""
    if mode not in ("weak", "strong"):
        raise ValueError(f"mode must be weak or strong, got {mode!r}")
    t_c1 = compute_time(t_1, comm_time(w, net, 1), w.overlap)
    rows = []
    base = None
    for n in nodes:
        if mode == "weak":
            t_c, ga, tokens = t_c1, w.grad_accum, w.tokens_per_device_step
        else:  # the global batch is fixed: fewer accumulation rounds, less compute per device
            ga = max(1, round(w.grad_accum / n))
            t_c, tokens = t_c1 / n, w.tokens_per_device_step / n
        t_comm = comm_time(w, net, n, grad_accum=ga)
        t = step_time(t_c, t_comm, w.overlap)
        rate = tokens / t
        base = base or rate
        rows.append(
            {
                "nodes": n,
                "devices": n * net.devices_per_node,
                "step_s": t,
                "compute_s": t_c,
                "comm_s": t_comm,
                "tokens_per_s_per_device": rate,
                "efficiency": rate / base,
            }
        )
    return rows


def calibrate_bandwidth(
    w: ZeroWorkload, t_1: float, t_2: float, *, latency_s: float = 0.0, overlap: float = 0.0
) -> Network:
    """Fit the inter-node bandwidth of one-device "nodes" to a 1-node vs 2-node weak-scaling pair.

    With one device per node, ``t_1`` has no communication, so ``t_2 - t_1`` is the exposed
    communication of a 2-device ring; the latency is taken as given.
    """
    net = Network("calibrated", 1, float("inf"), float("inf"), latency_s)
    exposed = t_2 - t_1
    fixed = comm_time(w, net, 2)  # the latency part only (infinite bandwidth)
    need = exposed + overlap * t_1 - fixed
    if need <= 0:
        raise ValueError(
            f"2-node step {t_2:.4g} s is not slower than 1-node {t_1:.4g} s beyond latency and "
            "overlap: nothing to fit"
        )
    volume = w.grad_accum * (w.gathers * w.param_bytes + w.grad_bytes) * w.params / 2
    return replace(net, inter_bw=volume / need, intra_bw=volume / need)


def assumptions(w: ZeroWorkload, net: Network, t_1: float, source: str) -> dict[str, Any]:
    return {
        "formula": __doc__.split("::", 1)[1].split("``t_compute``", 1)[0].strip(),
        "network": asdict(net),
        "workload": asdict(w),
        "single_node_step_s": t_1,
        "single_node_step_source": source,
    }
