"""Medians, ratios to direct, targets met or not, the Markdown table and charts."""

import os

from .common import median, percentile

TARGETS = ["direct", "pgrelay", "haproxy", "pgbouncer"]
PROXIES = ["pgrelay", "haproxy", "pgbouncer"]
TITLES = {"select_rw": "select-only, rw", "select_ro": "select-only, ro",
          "tpcb_rw": "tpcb-like, rw"}
COLORS = {"direct": "#888888", "pgrelay": "#1f77b4", "haproxy": "#ff7f0e",
          "pgbouncer": "#2ca02c", "pgrelay-tx": "#17becf",
          "pgrelay-api": "#8c564b"}
# The failover scenario's wording per DCS (results without "dcs" are ZooKeeper's).
DCS_TEXTS = {
    "zookeeper": {
        "reroute_from": "leader znode ctime",
        "leaderless": "Patroni's leader znode deleted -> created (ZooKeeper watch)",
        "own_event": "leader znode event",
        "chart_reroute": "reroute: leader znode created -> first commit on new primary",
        "note": "",
    },
    "etcd": {
        "reroute_from": "leader key PUT's arrival at the etcd watch",
        "leaderless": "Patroni's leader key deleted -> created (etcd watch)",
        "own_event": "leader key event",
        "chart_reroute": "reroute: leader key PUT (etcd watch) -> first commit on new primary",
        "note": " On etcd, which keeps no creation time, reroute starts when the new leader "
                "key's PUT arrives at an independent etcd watch (not at the key's creation as "
                "the DCS recorded it, as with ZooKeeper's znode ctime).",
    },
}


def dcs_of(results):
    return results.get("dcs") or "zookeeper"


def dcs_texts(results):
    return DCS_TEXTS.get(dcs_of(results), DCS_TEXTS["zookeeper"])


def ok_runs(runs, **match):
    return [r for r in runs if not r.get("error") and all(r.get(k) == v for k, v in match.items())]


def per_target_median(runs, key, **match):
    out = {}
    for t in TARGETS:
        vals = [r[key] for r in ok_runs(runs, target=t, **match) if r.get(key) is not None]
        if vals:
            out[t] = median(vals)
    return out


def round_ratios(runs, key, base="direct", **match):
    """Median over rounds of value / base's value in the same round."""
    by_round = {}
    for r in ok_runs(runs, **match):
        if r.get(key) is not None:
            by_round.setdefault(r["round"], {})[r["target"]] = r[key]
    out = {}
    for t in TARGETS:
        ratios = [vals[t] / vals[base] for vals in by_round.values()
                  if t in vals and vals.get(base)]
        if ratios:
            out[t] = median(ratios)
    return out


def cells(values, ratios=None):
    return {t: {"value": v, "ratio": (ratios or {}).get(t)} for t, v in values.items()}


def summarize(results):
    """Rows of the results table: scenario, metric, cells per target, the
    target's wording and whether pgrelay met it (None: not judged)."""
    sc = results["scenarios"]
    rows = []

    tp = sc.get("throughput")
    if tp:
        for wl in ("select_rw", "select_ro", "tpcb_rw"):
            tps = per_target_median(tp["runs"], "tps", workload=wl)
            ratio = round_ratios(tp["runs"], "tps", workload=wl)
            met = None
            if {"pgrelay", "haproxy", "pgbouncer"} <= set(tps) and "pgrelay" in ratio:
                met = (ratio["pgrelay"] >= 0.85 and tps["pgrelay"] > tps["haproxy"]
                       and tps["pgrelay"] > tps["pgbouncer"])
            rows.append({"scenario": "1. throughput", "metric": "%s: TPS" % TITLES[wl],
                         "unit": "tps", "fmt": "{:,.0f}", "cells": cells(tps, ratio),
                         "target": ">= 0.85x direct, > HAProxy and PgBouncer", "met": met})
        for wl in ("select_rw", "select_ro", "tpcb_rw"):
            cpu = per_target_median(tp["runs"], "cpu_us_per_txn", workload=wl)
            vs_bouncer = {t: v / cpu["pgbouncer"] for t, v in cpu.items()
                          if cpu.get("pgbouncer")}
            met = None
            target = ""
            if wl.startswith("select"):
                target = "<= 8 us, < 0.5x PgBouncer"
                if "pgrelay" in cpu and "pgbouncer" in cpu:
                    met = cpu["pgrelay"] <= 8.0 and cpu["pgrelay"] < 0.5 * cpu["pgbouncer"]
            rows.append({"scenario": "2. CPU cost", "metric": "%s: proxy CPU us/txn "
                         "(ratio: to PgBouncer)" % TITLES[wl], "unit": "us",
                         "fmt": "{:.1f}", "cells": cells(cpu, vs_bouncer),
                         "target": target, "met": met})

    cr = sc.get("connrate")
    if cr:
        rate = per_target_median(cr["runs"], "tps")
        ratio = round_ratios(cr["runs"], "tps")
        met = rate["pgrelay"] >= rate["haproxy"] if {"pgrelay", "haproxy"} <= set(rate) else None
        rows.append({"scenario": "3. connection rate", "metric": "pgbench -C -S, rw: "
                     "connections/s", "unit": "conn/s", "fmt": "{:,.0f}",
                     "cells": cells(rate, ratio), "target": ">= HAProxy", "met": met})

    mem = sc.get("memory")
    if mem:
        n = mem["config"]["connections"]
        kib = per_target_median(mem["runs"], "kib_per_conn", variant=None)
        rss = {t: v / 1024.0 for t, v in per_target_median(mem["runs"], "rss_after_kib",
                                                           variant=None).items()}
        met = None
        if set(PROXIES) <= set(kib):
            met = (kib["pgrelay"] <= 10.0 and kib["pgrelay"] < kib["haproxy"]
                   and kib["pgrelay"] < kib["pgbouncer"])
        rows.append({"scenario": "4. memory", "metric": "%s idle connections: RSS KiB per "
                     "connection" % format(n, ","), "unit": "KiB", "fmt": "{:.2f}",
                     "cells": cells(kib), "target": "<= 10 KiB, < HAProxy and PgBouncer",
                     "met": met})
        rows.append({"scenario": "4. memory", "metric": "%s idle connections: RSS MiB"
                     % format(n, ","), "unit": "MiB", "fmt": "{:.1f}", "cells": cells(rss),
                     "target": "", "met": None})
        tls = per_target_median(mem["runs"], "kib_per_conn", variant="tls")
        if tls:
            met = None
            if {"pgrelay", "pgbouncer"} <= set(tls):
                met = tls["pgrelay"] < tls["pgbouncer"]
            rows.append({"scenario": "4. memory", "metric": "%s idle TLS connections (client "
                         "side TLS, plaintext backend): RSS KiB per connection" % format(n, ","),
                         "unit": "KiB", "fmt": "{:.2f}", "cells": cells(tls),
                         "target": "< PgBouncer with TLS", "met": met})

    bk = sc.get("bulk")
    if bk:
        for direction, title in (("out", "COPY TO STDOUT"), ("in", "COPY FROM STDIN")):
            mbs = per_target_median(bk["runs"], "mb_per_s", direction=direction)
            if not mbs:
                continue
            ratio = round_ratios(bk["runs"], "mb_per_s", direction=direction)
            met = ratio["pgrelay"] >= 0.95 if "pgrelay" in ratio else None
            rows.append({"scenario": "5. bulk", "metric": "%s %s MB, rw: MB/s" % (
                title, format(int(bk["config"]["megabytes"]), ",")), "unit": "MB/s",
                "fmt": "{:,.0f}", "cells": cells(mbs, ratio),
                "target": ">= 0.95x direct", "met": met})

    fo = sc.get("failover")
    if fo:
        leaderless = [s["leaderless_ms"] for s in fo["switchovers"] if s.get("leaderless_ms") is not None]
        rer, out = {}, {}
        for t in TARGETS:
            rr = [r["reroute_ms"] for r in ok_runs(fo["runs"], target=t) if "reroute_ms" in r]
            oo = [r["outage_ms"] for r in ok_runs(fo["runs"], target=t) if "outage_ms" in r]
            if rr:
                rer[t] = "%s / %s" % (fmt_ms(percentile(rr, 50)), fmt_ms(percentile(rr, 99)))
                rer[t + "_p99"] = percentile(rr, 99)
            if oo:
                out[t] = "%s / %s" % (fmt_ms(median(oo)), fmt_ms(max(oo)))
        met_rr = rer["pgrelay_p99"] <= 100.0 if "pgrelay_p99" in rer else None
        mine = ok_runs(fo["runs"], target="pgrelay")
        excess = [r["outage_minus_leaderless_ms"] for r in mine if "outage_minus_leaderless_ms" in r]
        met_out = None
        if mine and len(excess) == len(mine):
            met_out = max(excess) <= 100.0
        n = len(fo["switchovers"])
        rows.append({"scenario": "6. failover", "metric": "%d switchovers: reroute ms, p50 / p99 "
                     "(%s -> first commit on the new primary)"
                     % (n, dcs_texts(results)["reroute_from"]),
                     "unit": "ms", "fmt": None,
                     "cells": {t: {"value": rer[t]} for t in TARGETS if t in rer},
                     "target": "pgrelay p99 <= 100 ms", "met": met_rr})
        rows.append({"scenario": "6. failover", "metric": "%d switchovers: write outage ms, "
                     "median / max (last commit on old -> first on new); Patroni leaderless "
                     "window median %s, max %s" % (n, fmt_ms(median(leaderless)),
                                                    fmt_ms(max(leaderless) if leaderless else None)),
                     "unit": "ms", "fmt": None,
                     "cells": {t: {"value": out[t]} for t in TARGETS if t in out},
                     "target": "each <= leaderless window + 100 ms", "met": met_out})
        gap = {s["index"]: s["cluster_write_gap_ms"] for s in fo["switchovers"]
               if s.get("cluster_write_gap_ms") is not None}
        extra = {}
        for t in TARGETS:
            vals = [r["outage_ms"] - gap[r["round"]] for r in ok_runs(fo["runs"], target=t)
                    if "outage_ms" in r and r["round"] in gap]
            if vals:
                extra[t] = "%s / %s" % (fmt_ms(median(vals)), fmt_ms(max(vals)))
        if extra:
            rows.append({"scenario": "6. failover", "metric": "outage beyond the cluster's own "
                         "write gap ms, median / max (the gap: last commit any client got from "
                         "the old primary -> first any got from the new; median %s)"
                         % fmt_ms(median(list(gap.values()))), "unit": "ms", "fmt": None,
                         "cells": {t: {"value": extra[t]} for t in TARGETS if t in extra},
                         "target": "", "met": None})
        api_row = patroni_api_row(fo, n)
        if api_row:
            rows.append(api_row)
    rows += crowd_rows(results)
    rows += pooled_rows(results)
    return rows


def patroni_api_row(fo, n):
    """pgrelay-api (source = "patroni_api") against pgrelay watching the DCS,
    switchover by switchover: what polling Patroni's REST API costs."""
    api = {r["round"]: r["reroute_ms"] for r in ok_runs(fo["runs"], target="pgrelay-api")
           if "reroute_ms" in r}
    watch = {r["round"]: r["reroute_ms"] for r in ok_runs(fo["runs"], target="pgrelay")
             if "reroute_ms" in r}
    behind = [api[i] - watch[i] for i in sorted(api) if i in watch]
    if not behind:
        return None
    interval = fo["config"].get("pgrelay-api", "")
    return {"scenario": "6. failover", "metric": "%d switchovers: pgrelay with source = patroni_api "
            "(%s): reroute ms p50 / p99, and behind pgrelay on the DCS in the same switchover, "
            "median / max" % (n, interval.split("polling ", 1)[-1]),
            "unit": "ms", "fmt": None,
            "cells": {"pgrelay": {"value": "%s / %s; behind %s / %s" % (
                fmt_ms(percentile(list(api.values()), 50)), fmt_ms(percentile(list(api.values()), 99)),
                fmt_ms(median(behind)), fmt_ms(max(behind)))}},
            "target": "", "met": None}


def crowd_text(c):
    per = " / ".join(str(n) for n in c["errors_per_switchover"])
    return "%s; %d reconnects; slowest %s ms" % (per, c["reconnects"], fmt_ms(c["slowest_write_ms"]))


def crowd_rows(results):
    """The failover scenario's crowds: long-lived clients through each target
    (pgrelay passthrough in its column), and through pgrelay's transaction
    pool mode in a row of its own."""
    fo = results["scenarios"].get("failover")
    if not fo or not fo.get("crowd"):
        return []
    crowd = fo["crowd"]
    n = fo["config"].get("crowd", 0)
    rows = [{"scenario": "6. failover", "metric": "%d long-lived clients per target, each writing "
             "every 0.3-1.2 s: client errors per switchover; reconnects; slowest write" % n,
             "unit": "", "fmt": None,
             "cells": {t: {"value": crowd_text(crowd[t])} for t in TARGETS if t in crowd},
             "target": "", "met": None}]
    tx = crowd.get("pgrelay-tx")
    if tx:
        inflight = all(k in ("08007", "40001") for k in tx.get("errors", {}))
        met = tx["reconnects"] == 0 and inflight
        rows.append({"scenario": "6. failover", "metric": "the same %d clients through pgrelay's rw "
                     "in transaction pool mode (errors: %s)"
                     % (n, ", ".join("%s x %d" % kv for kv in sorted(tx.get("errors", {}).items())) or "none"),
                     "unit": "", "fmt": None, "cells": {"pgrelay": {"value": crowd_text(tx)}},
                     "target": "0 reconnects; errors only for requests in flight (08007/40001)",
                     "met": met})
    return rows


POOL_TITLES = {"select": "select-only (-S)", "tpcb": "tpcb-like",
               "prepared": "select-only -M prepared"}
POOL_COLUMNS = ["direct", "pgrelay", "pgbouncer"]


def pooled_rows(results):
    """The pooled table: pgrelay's pool modes against PgBouncer's, measured
    interleaved in the same run. Ratios: to PgBouncer for transaction mode
    (direct cannot take 500 connections: max_connections = 200), to direct
    for the session-mode connection rate."""
    sc = results["scenarios"]
    rows = []
    tp = sc.get("pool-throughput")
    if tp:
        n = tp["config"]["clients"]
        where = "transaction mode, %s clients" % format(n, ",")
        for wl in ("select", "tpcb", "prepared"):
            everything = [r for r in tp["runs"] if r.get("workload") == wl]
            failed = [r for r in everything if r.get("expected_failure")]
            runs = [r for r in everything if not r.get("expected_failure")]
            tps = per_target_median(runs, "tps")
            ratio = round_ratios(runs, "tps", base="pgbouncer")
            cell = cells(tps, ratio)
            met = None
            target = ">= PgBouncer"
            if wl == "prepared":
                target = "pgrelay runs it (>= PgBouncer if PgBouncer does)"
                if failed:
                    cell["pgbouncer"] = {"value": None, "text": failure_text(failed)}
                if "pgrelay" in tps:
                    met = bool(failed) or ("pgrelay" in ratio and ratio["pgrelay"] >= 1.0)
            elif "pgrelay" in ratio:
                met = ratio["pgrelay"] >= 1.0
            rows.append({"table": "pooled", "scenario": "7. pooled throughput",
                         "metric": "%s, %s: TPS (ratio: to PgBouncer)" % (where, POOL_TITLES[wl]),
                         "unit": "tps", "fmt": "{:,.0f}", "cells": cell, "target": target,
                         "met": met})
        for wl in ("select", "tpcb", "prepared"):
            runs = [r for r in tp["runs"] if r.get("workload") == wl
                    and not r.get("expected_failure")]
            cpu = per_target_median(runs, "cpu_us_per_txn")
            vs = {t: v / cpu["pgbouncer"] for t, v in cpu.items() if cpu.get("pgbouncer")}
            met = None
            target = "< PgBouncer"
            if wl == "prepared" and "pgbouncer" not in cpu:
                target = ""
            elif "pgrelay" in cpu and "pgbouncer" in cpu:
                met = cpu["pgrelay"] < cpu["pgbouncer"]
            rows.append({"table": "pooled", "scenario": "8. pooled CPU cost",
                         "metric": "%s, %s: proxy CPU us/txn (ratio: to PgBouncer)"
                         % (where, POOL_TITLES[wl]), "unit": "us", "fmt": "{:.1f}",
                         "cells": cells(cpu, vs), "target": target, "met": met})
    cr = sc.get("pool-connrate")
    if cr:
        for clients in cr["config"].get("client_counts", [cr["config"]["clients"]]):
            runs = [r for r in cr["runs"] if r.get("clients", cr["config"]["clients"]) == clients]
            rate = per_target_median(runs, "tps")
            base = "direct" if any(r["target"] == "direct" for r in runs) else "pgbouncer"
            ratio = round_ratios(runs, "tps", base=base)
            rows.append({"table": "pooled", "scenario": "9. pooled connection rate",
                         "metric": "session mode, pgbench -C -S -c %s, rw: connections/s "
                         "(ratio: to %s)%s" % (format(clients, ","), {"direct": "direct",
                                               "pgbouncer": "PgBouncer"}[base],
                                               "" if base == "direct"
                                               else "; direct cannot take %s clients"
                                               % format(clients, ",")),
                         "unit": "conn/s", "fmt": "{:,.0f}", "cells": cells(rate, ratio),
                         "target": "", "met": None})
    mem = sc.get("pool-memory")
    if mem:
        n = mem["config"]["connections"]
        kib = per_target_median(mem["runs"], "kib_per_conn")
        rss = {t: v / 1024.0 for t, v in per_target_median(mem["runs"], "rss_after_kib").items()}
        met = kib["pgrelay"] <= kib["pgbouncer"] if {"pgrelay", "pgbouncer"} <= set(kib) else None
        rows.append({"table": "pooled", "scenario": "10. pooled memory",
                     "metric": "transaction mode, %s idle clients: RSS KiB per client"
                     % format(n, ","), "unit": "KiB", "fmt": "{:.2f}", "cells": cells(kib),
                     "target": "<= PgBouncer", "met": met})
        rows.append({"table": "pooled", "scenario": "10. pooled memory",
                     "metric": "transaction mode, %s idle clients: RSS MiB" % format(n, ","),
                     "unit": "MiB", "fmt": "{:.1f}", "cells": cells(rss), "target": "",
                     "met": None})
    return rows


def failure_text(failed):
    """One 'fails: ERROR: ... (aborted: 500, 494 of 500 clients)' per error."""
    by_error = {}
    for r in failed:
        by_error.setdefault(r.get("failure") or r.get("outcome", "?"), []).append(r)
    parts = []
    for err, rs in by_error.items():
        aborted = [str(r["aborted_clients"]) for r in rs if r.get("aborted_clients")]
        parts.append("fails: %s%s" % (err, " (clients aborted: %s of %s)" % (
            ", ".join(aborted), format(rs[0].get("clients", 0), ",")) if aborted else ""))
    return "; ".join(parts)


def fmt_ms(v):
    return "-" if v is None else ("%.0f" % v if v >= 100 else "%.1f" % v)


def fmt_cell(row, t):
    c = row["cells"].get(t)
    if c and c.get("text"):
        return c["text"].replace("|", "/")
    if not c or c.get("value") is None:
        return "-"
    v = c["value"]
    text = row["fmt"].format(v) if row.get("fmt") else str(v)
    if c.get("ratio") is not None:
        text += " (%.2fx)" % c["ratio"]
    return text


def markdown(results, rows):
    smoke = results["mode"] == "smoke"
    o = results["options"]
    mem = results["scenarios"].get("memory", {}).get("config", {})
    mem_n = mem.get("connections", o["connections"])
    mem_note = mem.get("limit_note")
    lines = [
        "# pgrelay benchmark: %s" % results["name"],
        "",
        "Mode `%s`, %s, %s rounds interleaved (direct, pgrelay, haproxy, pgbouncer, repeat), "
        "medians; in parentheses the ratio to direct in the same round (median over rounds), "
        "for CPU the ratio to PgBouncer. %s." % (
            results["mode"], results["started"], o["rounds"], describe_host(results["host"])
            + ("; Patroni's DCS: etcd (pgrelay follows it through etcd)"
               if dcs_of(results) == "etcd" else "")),
    ]
    if any(k in results["scenarios"] for k in ("throughput", "connrate", "memory", "bulk",
                                                "failover")) or not results["scenarios"]:
        lines += [
        "",
        "pgbench -c 16 -j 2, -T %ss (connection rate -T %ss, md5 logins), scale %s; memory: %s "
        "idle connections (%s rounds, plaintext and TLS) to a fake backend; COPY %s MB out, then in; %s switchovers.%s%s" % (
            o["duration"], o["conn_duration"], o["scale"], format(mem_n, ","),
            o["mem_rounds"], o["copy_mb"], o["switchovers"],
            " Quick mode: fewer rounds, shorter runs, %s instead of 10,000 idle connections, "
            "%s MB instead of 1 GB, %s instead of 10 switchovers." % (
                format(mem_n, ","), o["copy_mb"], o["switchovers"])
            if results["mode"] == "quick" else "",
            " Memory: %s." % mem_note if mem_note else ""),
        ]
    lines += [
        "",
        "| scenario | metric | direct | pgrelay | haproxy | pgbouncer | target | pgrelay vs target |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    def met_text(row):
        return "-" if smoke or row["met"] is None else ("met" if row["met"] else "**not met**")
    for row in rows:
        if row.get("table") == "pooled":
            continue
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            row["scenario"], row["metric"], fmt_cell(row, "direct"), fmt_cell(row, "pgrelay"),
            fmt_cell(row, "haproxy"), fmt_cell(row, "pgbouncer"), row["target"] or "",
            met_text(row) if row["target"] else ""))
    fo = results["scenarios"].get("failover")
    if fo and fo["switchovers"]:
        targets = fo["config"]["targets"]
        dt = dcs_texts(results)
        lines += ["", "Failover, per switchover, in ms. Per target: reroute / outage. leaderless: "
                  "%s; cluster write "
                  "gap: the last commit any write loop got from the old primary -> the first any "
                  "got from the new one; pgrelay's own reroute: its pgrelay_reroute_seconds "
                  "(%s -> rw routes there). direct = libpq multi-host with "
                  "target_session_attrs=read-write; PgBouncer is not measured: its [databases] "
                  "entry names one fixed host.%s" % (dt["leaderless"], dt["own_event"], dt["note"]),
                  "",
                  "| # | switchover | leaderless | cluster write gap | pgrelay's own reroute | "
                  + " | ".join(targets) + " |",
                  "|---|---|---:|---:|---:|" + "---:|" * len(targets)]
        for sw in fo["switchovers"]:
            parts = []
            for t in targets:
                r = next((r for r in fo["runs"] if r["round"] == sw["index"] and r["target"] == t), {})
                parts.append("error" if r.get("error") else "%s / %s" % (
                    fmt_ms(r.get("reroute_ms")), fmt_ms(r.get("outage_ms"))))
            lines.append("| %d | %s -> %s | %s | %s | %s | %s |" % (
                sw["index"], sw["old"], sw["new"], fmt_ms(sw.get("leaderless_ms")),
                fmt_ms(sw.get("cluster_write_gap_ms")), fmt_ms(sw.get("pgrelay_own_reroute_ms")),
                " | ".join(parts)))
    pooled = [r for r in rows if r.get("table") == "pooled"]
    if pooled:
        lines += ["", pooled_intro(results), "",
                  "| scenario | metric | direct | pgrelay | pgbouncer | target | "
                  "pgrelay vs target |", "|---|---|---:|---:|---:|---|---|"]
        for row in pooled:
            lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                row["scenario"], row["metric"], fmt_cell(row, "direct"),
                fmt_cell(row, "pgrelay"), fmt_cell(row, "pgbouncer"), row["target"] or "",
                met_text(row) if row["target"] else ""))
    if not any(r.get("table") != "pooled" for r in rows) and pooled:
        # Only pooled scenarios ran: drop the empty passthrough table.
        head = lines.index("| scenario | metric | direct | pgrelay | haproxy | pgbouncer | "
                           "target | pgrelay vs target |")
        del lines[head:head + 3]
    if results["errors"]:
        lines += ["", "Errors (the harness exits non-zero):", ""]
        lines += ["- %s" % e.replace("\n", " ")[:400] for e in results["errors"]]
    if results.get("charts"):
        lines += [""] + ["![%s](%s)" % (os.path.splitext(c)[0], c) for c in results["charts"]]
    return "\n".join(lines) + "\n"


def pooled_intro(results):
    sc = results["scenarios"]
    parts = []
    tp = sc.get("pool-throughput", {}).get("config")
    if tp:
        parts.append("transaction mode: pgbench -c %s -j 2 -T %ss as %s, %s round(s); direct "
                     "is not in these rows (the cluster's max_connections = 200 cannot take "
                     "500 clients), so the ratio is to PgBouncer; PgBouncer's -M prepared run "
                     "may fail (1.18 cannot carry protocol-level prepared statements in "
                     "transaction mode): what happened is its cell"
                     % (format(tp["clients"], ","), tp["duration_s"], tp["user"], tp["rounds"]))
    cr = sc.get("pool-connrate", {}).get("config")
    if cr:
        counts = cr.get("client_counts", [cr["clients"]])
        parts.append("session mode: pgbench -C -S -c %s -j 2 -T %ss as %s, ratio to direct "
                     "(to PgBouncer above %d clients: pgbench -C holds every client's "
                     "connection while its query is out, and direct cannot take that many)"
                     % (" and -c ".join(format(c, ",") for c in counts), cr["duration_s"],
                        cr["user"], cr.get("direct_max_clients", 150)))
    mem = sc.get("pool-memory", {}).get("config")
    if mem:
        parts.append("memory: a fresh pgrelay and PgBouncer in transaction mode in front of the "
                     "fake backend, each client logged in (md5) and ran one SELECT 1%s"
                     % ("; " + mem["limit_note"] if mem.get("limit_note") else ""))
    size = (tp or cr or mem or {}).get("pool_size", 20)
    return ("Pooled: pgrelay (a second process: `[pool]` pool_mode, pool_size = %d, auth_file) "
            "against PgBouncer (its own instance: pool_mode, default_pool_size = %d), both "
            "interleaved in the same run, medians; %s." % (size, size, "; ".join(parts)))


def describe_host(h):
    return "%s CPUs (%s), kernel %s; %s, %s, %s, %s" % (
        h.get("cpus"), h.get("cpu_model") or "?", h.get("kernel"), h.get("pgrelay"),
        (h.get("haproxy") or "").split(" - ")[0], (h.get("pgbouncer") or ""),
        h.get("postgresql"))


# ---------------------------------------------------------------- charts

def charts(results, rows, outdir, name):
    """PNG charts next to the JSON; returns the file names written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    sc = results["scenarios"]

    # Everything that is a ratio to direct, in one chart.
    groups = []
    tp = sc.get("throughput")
    if tp:
        for wl in ("select_rw", "select_ro", "tpcb_rw"):
            groups.append((TITLES[wl] + "\nTPS", tp["runs"], "tps", {"workload": wl}, 0.85))
    if sc.get("connrate"):
        groups.append(("pgbench -C\nconnections/s", sc["connrate"]["runs"], "tps", {}, None))
    if sc.get("bulk"):
        groups.append(("COPY out\nMB/s", sc["bulk"]["runs"], "mb_per_s", {"direction": "out"},
                       0.95))
        groups.append(("COPY in\nMB/s", sc["bulk"]["runs"], "mb_per_s", {"direction": "in"},
                       0.95))
    if groups:
        fig, ax = plt.subplots(figsize=(10, 4.8))
        width = 0.26
        top = 2.0   # PgBouncer's pooled logins reach several times direct's rate
        for gi, (label, runs, key, match, goal) in enumerate(groups):
            ratios = round_ratios(runs, key, **match)
            absolute = per_target_median(runs, key, **match)
            for pi, t in enumerate(PROXIES):
                if t not in ratios:
                    continue
                x = gi + (pi - 1) * width
                shown = min(ratios[t], top)
                ax.bar(x, shown, width, color=COLORS[t], label=t if gi == 0 else None)
                text = "{:,.0f}".format(absolute[t])
                if ratios[t] > top:
                    text += " (%.1fx)" % ratios[t]
                ax.text(x, min(shown, top - 0.35) + 0.02, text, ha="center", va="bottom",
                        fontsize=7, rotation=90)
            if goal:
                ax.plot([gi - 1.5 * width, gi + 1.5 * width], [goal, goal], "k--", lw=1)
        ax.axhline(1.0, color=COLORS["direct"], lw=1)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([g[0] for g in groups], fontsize=8)
        ax.set_ylabel("ratio to direct (same round, median)")
        ax.set_ylim(0, top)
        ax.set_title("%s: throughput relative to direct (numbers: absolute medians; "
                     "dashed: pgrelay's target)" % name, fontsize=9)
        ax.legend(fontsize=8, loc="upper right")
        fig.tight_layout()
        written.append(save(fig, outdir, "%s-ratios.png" % name))
        plt.close(fig)

    # Costs: CPU per transaction and memory per connection.
    cost = []
    if tp:
        for wl in ("select_rw", "select_ro", "tpcb_rw"):
            cost.append(("CPU us per txn\n" + TITLES[wl],
                         per_target_median(tp["runs"], "cpu_us_per_txn", workload=wl),
                         8.0 if wl.startswith("select") else None))
    if sc.get("memory"):
        cost.append(("RSS KiB per idle connection\n(%s connections)"
                     % format(sc["memory"]["config"]["connections"], ","),
                     per_target_median(sc["memory"]["runs"], "kib_per_conn", variant=None),
                     10.0))
        tls = per_target_median(sc["memory"]["runs"], "kib_per_conn", variant="tls")
        if tls:
            cost.append(("RSS KiB per idle TLS connection\n(%s connections)"
                         % format(sc["memory"]["config"]["connections"], ","), tls, None))
    if cost:
        fig, axes = plt.subplots(1, len(cost), figsize=(3.2 * len(cost), 3.8))
        axes = axes if len(cost) > 1 else [axes]
        for ax, (label, vals, goal) in zip(axes, cost):
            names = [t for t in PROXIES if t in vals]
            ax.bar(names, [vals[t] for t in names], color=[COLORS[t] for t in names])
            for i, t in enumerate(names):
                ax.text(i, vals[t], "%.1f" % vals[t], ha="center", va="bottom", fontsize=8)
            if goal:
                ax.axhline(goal, color="k", ls="--", lw=1)
            ax.set_title(label, fontsize=9)
            ax.tick_params(labelsize=8)
        fig.suptitle("%s: proxy cost (lower is better; dashed: pgrelay's target)" % name,
                     fontsize=9)
        fig.tight_layout()
        written.append(save(fig, outdir, "%s-cost.png" % name))
        plt.close(fig)

    # The pooled rows: pgrelay's pool modes against PgBouncer's, one panel per
    # metric, absolute values (numbers on the bars).
    panels = []
    for row in (r for r in rows if r.get("table") == "pooled"):
        vals = {t: c["value"] for t, c in row["cells"].items()
                if isinstance(c.get("value"), (int, float)) and not c.get("text")}
        if row["unit"] in ("tps", "us", "conn/s", "KiB") and "pgrelay" in vals:
            label = row["metric"].split(": ")[0].replace("transaction mode, ", "").replace(
                "session mode, ", "session, ")
            panels.append(("%s\n%s" % (label, {"tps": "TPS", "us": "proxy CPU us/txn",
                                                "conn/s": "connections/s",
                                                "KiB": "RSS KiB per idle client"}[row["unit"]]),
                           vals, row))
    if panels:
        cols = min(4, len(panels))
        lines_ = (len(panels) + cols - 1) // cols
        fig, axes = plt.subplots(lines_, cols, figsize=(3.3 * cols, 3.4 * lines_), squeeze=False)
        flat = [a for line in axes for a in line]
        for ax, (label, vals, row) in zip(flat, panels):
            names = [t for t in ("direct", "pgrelay", "pgbouncer") if t in vals]
            failed = row["cells"].get("pgbouncer", {}).get("text")
            if failed:
                names.append("pgbouncer")
                vals = dict(vals, pgbouncer=0)
            ax.bar(names, [vals[t] for t in names], color=[COLORS[t] for t in names])
            for i, t in enumerate(names):
                if t == "pgbouncer" and failed:
                    import textwrap
                    ax.text(i, max(vals.values()) * 0.05, "\n".join(textwrap.wrap(
                        failed.split(";")[0].split(" (")[0], 22)), ha="center", va="bottom",
                        fontsize=6)
                    continue
                ax.text(i, vals[t], (row["fmt"] or "{}").format(vals[t]), ha="center",
                        va="bottom", fontsize=7)
            ax.set_title(label, fontsize=7)
            ax.tick_params(labelsize=7)
        for ax in flat[len(panels):]:
            ax.axis("off")
        fig.suptitle("%s: pooled, pgrelay against PgBouncer (%d server connections)"
                     % (name, (sc.get("pool-throughput") or sc.get("pool-connrate")
                               or sc.get("pool-memory"))["config"]["pool_size"]), fontsize=9)
        fig.tight_layout()
        written.append(save(fig, outdir, "%s-pooled.png" % name))
        plt.close(fig)

    fo = sc.get("failover")
    if fo and fo["switchovers"]:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        idx = [s["index"] for s in fo["switchovers"]]
        for t in fo["config"]["targets"]:
            rr = {r["round"]: r for r in ok_runs(fo["runs"], target=t)}
            xs = [i for i in idx if "reroute_ms" in rr.get(i, {})]
            a1.plot(xs, [rr[i]["reroute_ms"] for i in xs], "o-", color=COLORS[t], label=t)
            xs = [i for i in idx if "outage_ms" in rr.get(i, {})]
            a2.plot(xs, [rr[i]["outage_ms"] for i in xs], "o-", color=COLORS[t], label=t)
        leaderless = [(s["index"], s["leaderless_ms"]) for s in fo["switchovers"]
                      if s.get("leaderless_ms") is not None]
        if leaderless:
            a2.plot([i for i, _ in leaderless], [max(v, 1) for _, v in leaderless], "k_--",
                    ms=14, label="Patroni leaderless window")
            a2.plot([i for i, _ in leaderless], [v + 100 for _, v in leaderless], "k_:",
                    ms=14, label="leaderless + 100 ms (target)")
        gap = [(s["index"], s["cluster_write_gap_ms"]) for s in fo["switchovers"]
               if s.get("cluster_write_gap_ms") is not None]
        if gap:
            a2.plot([i for i, _ in gap], [v for _, v in gap], "_-.", color="#9467bd", ms=14,
                    label="cluster write gap (no client can do better)")
        a1.axhline(100, color="k", ls="--", lw=1)
        for ax, title in ((a1, dcs_texts(results)["chart_reroute"]),
                          (a2, "write outage: last commit on old -> first on new")):
            ax.set_yscale("log")
            ax.set_xlabel("switchover")
            ax.set_ylabel("ms (log scale)")
            ax.set_title(title, fontsize=9)
            ax.set_xticks(idx)
            ax.legend(fontsize=7)
        fig.suptitle("%s: switchovers under a write loop (direct = libpq multi-host, "
                     "target_session_attrs=read-write)%s"
                     % (name, "; Patroni on etcd" if dcs_of(results) == "etcd" else ""),
                     fontsize=9)
        fig.tight_layout()
        written.append(save(fig, outdir, "%s-failover.png" % name))
        plt.close(fig)
    return written


def save(fig, outdir, fname):
    fig.savefig(os.path.join(outdir, fname), dpi=100)
    return fname
