"""The tables: medians (min-max) over the rounds, the ratio ringpipe / piping-server of the
medians, and with a workers sweep the scaling table. Pure formatting over the run records.
"""

from __future__ import annotations

import statistics
from typing import Any

from .common import REF, RP
from .scenarios import SCENARIOS

COMMON = [("other_plus_steal", "other+steal", 2)]


def stats(values: list[float]) -> tuple[float, float, float] | None:
    return (statistics.median(values), min(values), max(values)) if values else None


def fmt_num(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def fmt_stat(s: tuple[float, float, float] | None, digits: int) -> str:
    if s is None:
        return "-"
    med, lo, hi = s
    if len({fmt_num(med, digits), fmt_num(lo, digits), fmt_num(hi, digits)}) == 1:
        return fmt_num(med, digits)
    return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def metric_value(run: dict[str, Any], key: str) -> float | None:
    if key == "other_plus_steal":
        return float(run.get("other_cores", 0.0)) + float(run.get("steal_cores", 0.0))
    v = run.get(key)
    return float(v) if isinstance(v, int | float) else None


def table(rows: list[list[str]], left: int = 2) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for k, r in enumerate(rows):
        cells = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
        if k == 0:
            out.append("-" * len(out[0]))
    return out


def summarize(cases: list[dict[str, Any]], runs: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """One table per scenario, in the registry's order: medians (min-max) per case and server
    over the runs that measured, and the ratio of each server's medians to piping-server's."""
    blocks: list[str] = []
    summary: list[dict[str, Any]] = []
    for scenario, sc in SCENARIOS.items():
        scases = [c for c in cases if c["scenario"] == scenario]
        if not scases:
            continue
        spec = sc.metrics + COMMON
        rows = [["case", "server", *(title for _k, title, _d in spec), "ok"]]
        kinds = set()
        for case in scases:
            meds: dict[str, dict[str, Any]] = {}
            for i, label in enumerate(case["servers"]):
                mine = [r for r in runs if r["case"] == case["name"] and r["server"] == label]
                good = [r for r in mine if r["ok"]]
                measured = [r for r in mine if r["ok"] or r.get("measured")]  # swarm: some streams failed
                kinds |= {r["mem_kind"] for r in good if r.get("mem_kind")}
                meds[label] = {"runs": len(mine), "ok": len(good)}
                cells = []
                for key, _title, digits in spec:
                    vals = [v for r in measured if (v := metric_value(r, key)) is not None]
                    s = stats(vals)
                    meds[label][key] = s
                    cells.append(fmt_stat(s, digits) if key != "other_plus_steal" else fmt_num(s and s[2], 2) + " max")
                rows.append([case["name"] if i == 0 else "", label, *cells, f"{len(good)}/{len(mine)}"])
            ratios: dict[str, dict[str, float | None]] = {}
            if REF in case["servers"]:
                ref = meds[REF]
                for label in case["servers"]:
                    if label == REF:
                        continue
                    rat: dict[str, float | None] = {}
                    for key, _title, _digits in sc.metrics:
                        a, b = meds[label].get(key), ref.get(key)
                        ok = a and b and a[0] > 0 and b[0] > 0 and key not in sc.no_ratio
                        rat[key] = a[0] / b[0] if ok and a and b else None
                    ratios[label] = rat
                    rows.append(
                        [
                            "",
                            f"ratio {label.replace(RP, 'rp')}/ps",
                            *(fmt_num(rat[k], 2) + "x" if rat[k] is not None else "-" for k, _t, _d in sc.metrics),
                            "",
                            "",
                        ]
                    )
            summary.append({"case": case["name"], "scenario": scenario, "servers": meds, "ratios": ratios})
        blocks.append(f"== {scenario}")
        blocks += table(rows)
        blocks.append(sc.note.format(kind=" / ".join(sorted(kinds)) or "PSS or RSS"))
        blocks.append("")
    blocks.append("cells: median (min-max) over the successful rounds; other+steal: the worst run's CPU of other")
    blocks.append("processes + hypervisor steal, in cores (high = disturbed run); ok: successful/total runs.")
    return "\n".join(blocks), summary


def scaling_table(summary: list[dict[str, Any]], sweep: list[int]) -> tuple[str, dict[str, Any]]:
    base_w = 1 if 1 in sweep else min(sweep)
    labels = [f"{RP} w={w}" for w in sweep]
    rows = [["case", "metric", *(f"w={w}" for w in sweep), REF]]
    data: dict[str, Any] = {}
    for entry in summary:
        servers = entry["servers"]
        if not all(label in servers for label in labels):
            continue
        for key, title, digits in SCENARIOS[entry["scenario"]].metrics[:2]:
            base = servers[f"{RP} w={base_w}"].get(key)
            cells = []
            per: dict[str, Any] = {}
            for w, label in zip(sweep, labels, strict=True):
                s = servers[label].get(key)
                speed = s[0] / base[0] if s and base and base[0] else None
                per[label] = {"median": s[0] if s else None, "speedup": speed}
                cells.append(fmt_num(s and s[0], digits) + (f" ({speed:.2f}x)" if speed and w != base_w else ""))
            ref = servers.get(REF, {}).get(key)
            per[REF] = {"median": ref[0] if ref else None}
            data.setdefault(entry["case"], {})[key] = per
            rows.append(
                [
                    entry["case"] if key == SCENARIOS[entry["scenario"]].metrics[0][0] else "",
                    title,
                    *cells,
                    fmt_num(ref and ref[0], digits),
                ]
            )
    text = "\n".join(
        [f"== scaling with ringpipe --workers (medians; (Nx) = value / value at w={base_w})", *table(rows)]
    )
    return text, data


def run_line(rec: dict[str, Any]) -> str:
    """One finished run, as printed while the benchmark goes on."""
    sc = SCENARIOS[rec["scenario"]]
    parts = [f"{title} {fmt_num(metric_value(rec, key), digits)}" for key, title, digits in sc.metrics]
    tail = f"other {rec.get('other_cores', 0):.2f} steal {rec.get('steal_cores', 0):.2f}"
    if (flag := sc.flag(rec)) is not None:
        parts.insert(0, flag)
    return "  ".join(parts) + "  " + tail
