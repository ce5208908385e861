// The status page (status_page.hpp). The document is assembled once from
// its style, body and script; the CSP names the style and the script by
// their SHA-256, so nothing else (an injected element, an attribute handler)
// could run even if some data ever reached the DOM as markup. The script
// only ever inserts data with textContent.
#include "proxy/status_page.hpp"

#include <openssl/evp.h>

#include <string>

namespace pgrelay {

namespace {

constexpr std::string_view kStyle = R"CSS(
:root {
  --bg: #f5f6f8; --panel: #ffffff; --text: #1d2430; --muted: #667085; --line: #e3e6eb;
  --ok: #127a3e; --ok-bg: #e3f5ea; --warn: #9a6100; --warn-bg: #fdf1dc; --bad: #b42318; --bad-bg: #fde7e5;
  --info: #175cd3; --info-bg: #e4edfd;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #11151c; --panel: #1a2029; --text: #e6e9ef; --muted: #98a2b3; --line: #2c3440;
    --ok: #5fd08f; --ok-bg: #173626; --warn: #f5c26b; --warn-bg: #3b2f17; --bad: #f9867b; --bad-bg: #3d1d1b;
    --info: #84adff; --info-bg: #1b2a48;
  }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { display: flex; align-items: baseline; gap: 16px; flex-wrap: wrap; padding: 14px 24px;
  background: var(--panel); border-bottom: 1px solid var(--line); }
header h1 { font-size: 18px; margin: 0; letter-spacing: .02em; }
header .meta { color: var(--muted); }
#state { margin-left: auto; }
main { padding: 16px 24px 32px; max-width: 1400px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap: 12px; margin-bottom: 16px; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; min-width: 0; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .05em; }
.card .value { font-size: 22px; font-weight: 600; overflow-wrap: anywhere; }
.card .sub { color: var(--muted); font-size: 12px; overflow-wrap: anywhere; }
section { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; margin-bottom: 16px; overflow-x: auto; }
section h2 { font-size: 14px; margin: 0; padding: 10px 14px; border-bottom: 1px solid var(--line); }
section h2 .note { font-weight: normal; color: var(--muted); margin-left: 8px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 6px 14px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 500; font-size: 12px; white-space: nowrap; }
tr:last-child td { border-bottom: none; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.empty { color: var(--muted); font-style: italic; }
.mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; font-size: 13px; }
.muted { color: var(--muted); }
.why { color: var(--muted); font-size: 12px; }
.badge { display: inline-block; padding: 0 7px; border-radius: 10px; font-size: 12px; font-weight: 600; margin-right: 4px;
  white-space: nowrap; }
.ok { color: var(--ok); background: var(--ok-bg); }
.warn { color: var(--warn); background: var(--warn-bg); }
.bad { color: var(--bad); background: var(--bad-bg); }
.info { color: var(--info); background: var(--info-bg); }
.plain { color: var(--muted); background: transparent; border: 1px solid var(--line); }
.lines div + div { margin-top: 2px; }
.two { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 16px; }
.two section { margin-bottom: 16px; }
@media (max-width: 900px) { .two { grid-template-columns: 1fr; } }
)CSS";

constexpr std::string_view kBody = R"HTML(
<header>
  <h1>pgrelay</h1>
  <span class="meta" id="whoami">connecting&hellip;</span>
  <span id="state" class="badge plain">loading</span>
</header>
<main>
  <div class="cards">
    <div class="card"><div class="label">Leader</div><div class="value" id="leader">&ndash;</div>
      <div class="sub" id="leader-sub"></div></div>
    <div class="card"><div class="label">rw routes to</div><div class="value" id="primary">&ndash;</div>
      <div class="sub" id="primary-sub"></div></div>
    <div class="card"><div class="label">ro routes to</div><div class="value" id="ro-targets">&ndash;</div>
      <div class="sub" id="ro-sub"></div></div>
    <div class="card"><div class="label">Client connections</div><div class="value" id="clients">&ndash;</div>
      <div class="sub" id="clients-sub"></div></div>
    <div class="card"><div class="label">Last reroute</div><div class="value" id="last-reroute">&ndash;</div>
      <div class="sub" id="last-reroute-sub"></div></div>
  </div>
  <section>
    <h2>Cluster members<span class="note" id="members-note"></span></h2>
    <table>
      <thead><tr><th>Member</th><th>Address</th><th>Role</th><th>State</th><th>Replication lag</th>
        <th>rw</th><th>ro</th><th>Backends rw / ro</th><th>Weight</th><th>Tags</th></tr></thead>
      <tbody id="members"></tbody>
    </table>
  </section>
  <section>
    <h2>Recent topology changes<span class="note" id="changes-note"></span></h2>
    <table>
      <thead><tr><th>When</th><th>What changed</th><th>rw</th><th>Reroute</th></tr></thead>
      <tbody id="changes"></tbody>
    </table>
  </section>
  <div class="two">
    <section>
      <h2>Pools per member<span class="note" id="pools-note"></span></h2>
      <table>
        <thead><tr><th>Member</th><th>Port</th><th>Mode</th><th>Database / user</th><th>Clients act / wait / all</th>
          <th>Servers act / idle / opening</th><th>Size</th><th>Wait timeouts</th></tr></thead>
        <tbody id="pools"></tbody>
      </table>
    </section>
    <section>
      <h2>pgrelay instances<span class="note" id="instances-note"></span></h2>
      <table>
        <thead><tr><th>Instance</th><th>Peer address</th><th>Version</th><th>Started</th><th>Cancel tag</th></tr></thead>
        <tbody id="instances"></tbody>
      </table>
    </section>
  </div>
</main>
)HTML";

constexpr std::string_view kScript = R"JS(
"use strict";
(function () {
  const REFRESH_MS = 1000, TIMEOUT_MS = 3000;
  const $ = (id) => document.getElementById(id);

  // Every datum goes in as text: textContent, never markup.
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function setText(id, text) { $(id).textContent = text === undefined || text === null ? "" : String(text); }
  function cell(content, cls) {
    const td = el("td", cls);
    if (content instanceof Node) td.appendChild(content);
    else if (Array.isArray(content)) for (const c of content) td.appendChild(c instanceof Node ? c : el("span", null, c));
    else if (content !== undefined && content !== null) td.textContent = String(content);
    return td;
  }
  function row(cells) {
    const tr = el("tr");
    for (const c of cells) tr.appendChild(c instanceof HTMLTableCellElement ? c : cell(c));
    return tr;
  }
  function emptyRow(cols, text) {
    const td = cell(text, "empty");
    td.colSpan = cols;
    return row([td]);
  }
  function badge(text, kind) { return el("span", "badge " + kind, text); }
  function str(v, dflt) { return v === undefined || v === null || v === "" ? dflt : String(v); }
  function num(v) { return typeof v === "number" && isFinite(v) ? v : 0; }

  function bytes(n) {
    if (typeof n !== "number") return "unknown";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0, v = n;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? String(v) : v.toFixed(1)) + " " + units[i];
  }
  function pad(n, w) { return String(n).padStart(w || 2, "0"); }
  function clock(ms) {
    const d = new Date(ms);
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." + pad(d.getMilliseconds(), 3);
  }
  function ago(ms, now) {
    const s = Math.max(0, Math.round((now - ms) / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s ago";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min ago";
    return Math.floor(s / 86400) + " d ago";
  }
  function millis(secs) { return typeof secs === "number" ? (secs * 1000).toFixed(1) + " ms" : null; }

  function eligibility(ok, why, label) {
    if (ok) return cell(badge(label, "ok"));
    return cell([badge("no", "plain"), el("div", "why", str(why, ""))]);
  }

  function renderSummary(t, now) {
    if (!t.known) {
      setText("leader", "unknown");
      setText("leader-sub", "no topology yet");
      setText("primary", "none");
      setText("primary-sub", "no topology yet");
      setText("ro-targets", "none");
      setText("ro-sub", "");
      return;
    }
    setText("leader", str(t.leader, "none"));
    const leaderSub = [];
    if (t.leader_from === "patroni_rest") leaderSub.push("from the members' Patroni REST APIs (DCS not trusted)");
    else if (t.leader_from) leaderSub.push("from the " + str(t.source, "DCS") + " leader key");
    if (t.switchover_to) leaderSub.push("switchover under way to " + t.switchover_to);
    setText("leader-sub", leaderSub.join("; "));
    const primary = $("primary");
    primary.textContent = str(t.primary, "none");
    primary.className = "value" + (t.primary ? "" : " bad");
    setText("primary-sub", t.primary ? "writes go here" : "rw connections wait: " + str(t.primary_reason, "no primary"));
    const members = Array.isArray(t.members) ? t.members : [];
    const ro = members.filter((m) => m.ro_eligible).map((m) => m.name);
    setText("ro-targets", ro.length ? ro.join(", ") : "none");
    const excluded = members.filter((m) => !m.ro_eligible && !m.is_primary).length;
    setText("ro-sub", ro.length ? ro.length + " eligible replica" + (ro.length === 1 ? "" : "s") +
            (excluded ? ", " + excluded + " excluded" : "") : "no eligible replica");
  }

  function renderConnections(t) {
    const c = t.connections || {};
    const rw = c.rw || {}, ro = c.ro || {};
    setText("clients", num(rw.clients) + " rw / " + num(ro.clients) + " ro");
    const held = num(rw.held) + num(ro.held);
    setText("clients-sub", (held ? held + " held waiting for a route; " : "") +
            (num(rw.clients_total) + num(ro.clients_total)) + " accepted since start");
  }

  function renderMembers(t) {
    const body = $("members");
    const rows = [];
    const members = t.known && Array.isArray(t.members) ? t.members : [];
    for (const m of members) {
      const name = [el("span", "mono", m.name), document.createTextNode(" ")];
      if (m.is_leader) name.push(badge("leader", "info"));
      if (m.is_primary) name.push(badge("primary", "ok"));
      if (m.unreachable) name.push(badge("unreachable", "bad"));
      if (m.excluded) name.push(badge("excluded", "warn"));
      const state = str(m.state, "?");
      const stateCell = cell(badge(state, state === "running" ? "ok" : state === "starting" ? "warn" : "bad"));
      const lag = m.is_primary || m.role === "primary" ? "\u2013" : bytes(m.lag_bytes);
      const b = m.backends || {};
      const tags = Array.isArray(m.tags) && m.tags.length ? m.tags.map((x) => badge(x, "plain")) : "";
      rows.push(row([
        cell(name), cell(str(m.address, ""), "mono"), str(m.role, "?"), stateCell, cell(lag, "num"),
        eligibility(m.rw_eligible, m.rw_excluded_because, "rw"), eligibility(m.ro_eligible, m.ro_excluded_because, "ro"),
        cell(num(b.rw) + " / " + num(b.ro), "num"), cell(str(m.weight, ""), "num"), cell(tags)]));
    }
    if (!rows.length) rows.push(emptyRow(10, t.known ? "no members" : "no topology yet"));
    body.replaceChildren(...rows);
    setText("members-note", t.known ? "snapshot " + str(t.version, "?") + " from " + str(t.source, "?") : "");
  }

  function renderChanges(t, now) {
    const list = Array.isArray(t.changes) ? t.changes : [];
    const rows = list.map((c) => {
      const when = [el("div", "mono", clock(num(c.at_unix_ms))), el("div", "why", ago(num(c.at_unix_ms), now))];
      const what = el("div", "lines");
      for (const w of Array.isArray(c.what) ? c.what : []) what.appendChild(el("div", null, w));
      const rw = str(c.primary_before, "none") === str(c.primary, "none") ? str(c.primary, "none")
               : str(c.primary_before, "none") + " \u2192 " + str(c.primary, "none");
      const rr = millis(c.reroute_seconds);
      return row([cell(when), cell(what), cell(rw, "mono"), rr ? cell(badge(rr, "info")) : cell("\u2013", "muted")]);
    });
    if (!rows.length) rows.push(emptyRow(4, Array.isArray(t.changes) ? "no changes yet" : "not reported by this pgrelay"));
    $("changes").replaceChildren(...rows);
    setText("changes-note", list.length ? "newest first; " + list.length + " shown of " + num(t.changes_total) +
            " since start" : "");
    const last = list.find((c) => typeof c.reroute_seconds === "number");
    if (last) {
      setText("last-reroute", millis(last.reroute_seconds));
      setText("last-reroute-sub", "to " + str(last.primary, "?") + ", " + ago(num(last.at_unix_ms), now));
    } else {
      setText("last-reroute", "none");
      setText("last-reroute-sub", "no failover or switchover seen since start");
    }
  }

  function renderPools(p, t) {
    const pools = p && Array.isArray(p.pools) ? p.pools.slice() : [];
    pools.sort((a, b) => str(a.member, "").localeCompare(str(b.member, "")) || str(a.port, "").localeCompare(str(b.port, "")) ||
               str(a.database, "").localeCompare(str(b.database, "")) || str(a.user, "").localeCompare(str(b.user, "")));
    const rows = [];
    let last = null;
    for (const r of pools) {
      const first = r.member !== last;
      last = r.member;
      rows.push(row([cell(first ? str(r.member, "?") : "", "mono"), str(r.port, ""), str(r.mode, ""),
        cell(str(r.database, "") + " / " + str(r.user, ""), "mono"),
        cell(num(r.clients_active) + " / " + num(r.clients_waiting) + " / " + num(r.clients), "num"),
        cell(num(r.servers_active) + " / " + num(r.servers_idle) + " / " + num(r.servers_opening), "num"),
        cell(num(r.pool_size), "num"), cell(num(r.wait_timeouts_total), "num")]));
    }
    if (!rows.length) rows.push(emptyRow(8, "no pools: the ports relay sessions without pooling (backends per member are above)"));
    $("pools").replaceChildren(...rows);
    const members = new Set(pools.map((r) => r.member));
    setText("pools-note", pools.length ? pools.length + " pool" + (pools.length === 1 ? "" : "s") + " on " + members.size +
            " member" + (members.size === 1 ? "" : "s") : "");
  }

  function renderInstances(t) {
    const rows = [];
    const add = (i, self) => {
      const id = [el("span", "mono", str(i.id, "?")), document.createTextNode(" ")];
      if (self) id.push(badge("this one", "info"));
      const tag = typeof i.cancel_tag === "number" ? "0x" + i.cancel_tag.toString(16).padStart(4, "0") : "";
      const started = typeof i.started === "number" && i.started > 0 ? new Date(i.started * 1000) : null;
      rows.push(row([cell(id), cell(str(i.peer_address, ""), "mono"), str(i.version, ""),
        started ? cell([el("div", null, started.toLocaleString()), el("div", "why", ago(started.getTime(), Date.now()))]) : "",
        cell(tag, "mono")]));
    };
    if (t.instance) add(t.instance, true);
    for (const p of Array.isArray(t.peers) ? t.peers : []) add(p, false);
    if (!rows.length) rows.push(emptyRow(5, "not reported"));
    $("instances").replaceChildren(...rows);
    const n = Array.isArray(t.peers) ? t.peers.length : 0;
    setText("instances-note", n ? n + " peer" + (n === 1 ? "" : "s") : "no peers");
    if (t.instance) {
      setText("whoami", "instance " + str(t.instance.id, "?") + " \u00b7 version " + str(t.instance.version, "?") +
              (t.source ? " \u00b7 following " + t.source : ""));
      document.title = "pgrelay " + str(t.instance.id, "") + " \u2013 " + str(t.leader, "no leader");
    }
  }

  function setState(text, kind) {
    const s = $("state");
    s.textContent = text;
    s.className = "badge " + kind;
  }

  async function getJson(path) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
    try {
      const r = await fetch(path, { cache: "no-store", signal: ctl.signal, credentials: "same-origin" });
      if (!r.ok) throw new Error(path + " answered HTTP " + r.status);
      return await r.json();
    } catch (e) {
      throw new Error(e && e.name === "AbortError" ? path + " timed out" : (e && e.message) || String(e));
    } finally {
      clearTimeout(timer);
    }
  }

  let refreshes = 0, lastOk = 0;
  async function tick() {
    try {
      const [t, p] = await Promise.all([getJson("/topology"), getJson("/pools")]);
      const now = typeof t.generated_at_unix_ms === "number" ? t.generated_at_unix_ms : Date.now();
      renderSummary(t, now);
      renderConnections(t);
      renderMembers(t);
      renderChanges(t, now);
      renderPools(p, t);
      renderInstances(t);
      lastOk = Date.now();
      setState("live \u00b7 " + clock(lastOk), "ok");
    } catch (e) {
      setState("cannot reach pgrelay: " + ((e && e.message) || e) +
               (lastOk ? " (showing data from " + clock(lastOk) + ")" : ""), "bad");
    } finally {
      refreshes++;
      document.body.dataset.refreshes = String(refreshes);
      setTimeout(tick, REFRESH_MS);
    }
  }
  tick();
})();
)JS";

std::string sha256_base64(std::string_view text) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(text.data(), text.size(), digest, &len, EVP_sha256(), nullptr);
    unsigned char out[4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1];
    const int n = EVP_EncodeBlock(out, digest, static_cast<int>(len));
    return std::string(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
}

struct Page {
    std::string html, csp;
    Page() {
        html.reserve(kStyle.size() + kBody.size() + kScript.size() + 256);
        html += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
                "<meta name=\"color-scheme\" content=\"light dark\">\n"
                // No favicon request (it would be a 404 in the console).
                "<link rel=\"icon\" href=\"data:,\">\n"
                "<title>pgrelay status</title>\n<style>";
        html += kStyle;
        html += "</style>\n</head>\n<body>";
        html += kBody;
        html += "<script>";
        html += kScript;
        html += "</script>\n</body>\n</html>\n";
        csp = "default-src 'none'; script-src 'sha256-" + sha256_base64(kScript) + "'; style-src 'sha256-" +
              sha256_base64(kStyle) +
              "'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
    }
};

const Page& page() {
    static const Page p;
    return p;
}

}  // namespace

std::string_view status_page_html() { return page().html; }
std::string_view status_page_csp() { return page().csp; }

}  // namespace pgrelay
