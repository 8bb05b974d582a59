"""The benchmark's figures: lag, RSS and CPU over the run, and the peers' ratios (matplotlib)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt

OVER_TIME = "bench-over-time.png"
PEER_RATIOS = "bench-peers.png"
COLOURS = {"llmconn": "tab:blue", "naive-kopf": "tab:orange", "blackbox": "tab:green"}


def over_time(result: dict[str, Any], path: Path) -> None:
    """Three panels over seconds since each process started: llmconn's schedule lag p99 (since
    the previous scrape, as the histogram's bucket bound), RSS and CPU of every process measured.
    The steady-state window of each operator is shaded."""
    series: dict[str, list[dict[str, Any]]] = result["series"]
    fig, (lag, rss, cpu) = plt.subplots(3, 1, sharex=True, figsize=(9, 8), layout="constrained")
    for name, points in series.items():
        if not points:
            continue
        colour = COLOURS.get(name)
        t = [p["t"] for p in points]
        rss.plot(t, [p["rss_mib"] for p in points], label=name, color=colour)
        cpu.plot(t, [p["cpu_percent"] for p in points], label=name, color=colour)
        lags = [(p["t"], p["lag_p99_s"]) for p in points if p.get("lag_p99_s") is not None]
        if lags:
            lag.step(*zip(*lags, strict=True), where="post", label=name, color=colour)
        window = result["marks"].get(name, {})
        if "steady_start" in window and "steady_end" in window:
            for ax in (lag, rss, cpu):
                ax.axvspan(window["steady_start"], window["steady_end"], color=colour, alpha=0.08)
    lag.set_ylabel("schedule lag p99 (s)")
    lag.set_yscale("log")  # bucket bounds, 1 ms and up
    lag.set_title(
        f"{result['connections']} connections at {result['interval']}"
        " (shaded: steady-state window; lag: llmconn's own metric)"
    )
    rss.set_ylabel("RSS (MiB)")
    cpu.set_ylabel("CPU (% of one core)")
    cpu.set_xlabel("seconds since the process started")
    for ax in (lag, rss, cpu):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def peer_ratios(result: dict[str, Any], path: Path) -> None:
    """One bar per measure: llmconn's figure divided by the peer's (below 1: llmconn spends or
    waits less). A log scale, so that 0.1 and 10 are as far from 1."""
    bars: list[tuple[str, float, str]] = []
    for peer, found in result["peers"].items():
        for measure, compared in found["compared"].items():
            ratio = compared["ratio"]
            if ratio is not None and math.isfinite(ratio) and ratio > 0:
                bars.append((f"{peer}: {measure}", ratio, COLOURS.get(peer, "tab:gray")))
    if not bars:
        return
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(bars) + 1.5), layout="constrained")
    labels, ratios, colours = zip(*bars, strict=True)
    ax.barh(labels, ratios, color=colours, left=0)
    ax.set_xscale("log")
    ax.axvline(1, color="black", linewidth=1)
    if "blackbox" in result["peers"]:
        ax.axvline(2, color="tab:green", linestyle="--", linewidth=1, label="blackbox CPU target")
        ax.legend(loc="upper right")
    for y, ratio in enumerate(ratios):
        ax.annotate(
            f"{ratio:.3g}",
            (ratio, y),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    ax.invert_yaxis()
    ax.set_xlabel("llmconn / peer (log scale; < 1: llmconn is lower)")
    ax.set_title(
        f"Peers in the same run, {result['connections']} connections at {result['interval']}"
    )
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
