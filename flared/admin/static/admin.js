// hermes-flare admin page: one static page over the control API (/api/*).
// It renders every value with textContent (never as HTML), keeps its token in
// sessionStorage (never a cookie), and sends every request to its own origin.

const API = "/api";
const TOKEN_KEY = "hermes-flare-admin";
const REFRESH_MS = 3000;
const SLOW_REFRESH_MS = 15000;

const $ = (id) => document.getElementById(id);
const view = { status: null, config: null, snapshots: {}, history: {}, logSource: "", busy: new Set(), lastSlow: 0 };

class AuthError extends Error {}
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// ------------------------------------------------------------------ requests

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** What went wrong, in the control API's own words. */
function messageOf(data, status) {
  if (data && Array.isArray(data.errors) && data.errors.length) {
    return data.errors
      .map((e) => (typeof e === "string" ? e : `${e.file}:${e.line}:${e.col}: ${e.path}: ${e.message}`))
      .join("\n");
  }
  if (data && typeof data.error === "string") return data.error;
  if (data && data.groups) {
    const parts = Object.entries(data.groups)
      .map(([g, v]) => (v && (v.error || (v.errors && messageOf(v)))) ? `group ${g}: ${v.error || messageOf(v)}` : "")
      .filter(Boolean);
    if (parts.length) return parts.join("\n");
  }
  if (data && Array.isArray(data.results)) {
    const bad = data.results.filter((r) => r.result === "failed" || r.result === "fenced");
    if (bad.length) return bad.map((r) => `${r.bot}: ${r.result}: ${r.error || r.reason || ""}`).join("\n");
  }
  return `the control API answered ${status}`;
}

async function call(method, path, body) {
  const headers = { ...authHeaders(), Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(API + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
    redirect: "error",
  });
  const text = await res.text();
  let data;
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    data = { error: text.trim().slice(0, 500) || `answered ${res.status}` };
  }
  if (res.status === 401) throw new AuthError(messageOf(data, 401));
  if (!res.ok) throw new ApiError(res.status, messageOf(data, res.status));
  return data;
}

// ------------------------------------------------------------------ sign-in

/** A one-time token in the URL fragment (never sent to a server in a URL) becomes a session token. */
async function signInFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const once = params.get("token");
  if (!once) return;
  history.replaceState(null, "", location.pathname + location.search);
  const res = await fetch(`${API}/admin/session`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token: once }),
    credentials: "same-origin",
    cache: "no-store",
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok || typeof data.session !== "string") {
    showLogin(data.error || "that sign-in link was already used or has expired: run `flared admin` for a new one");
    return false;
  }
  sessionStorage.setItem(TOKEN_KEY, data.session);
  return true;
}

function showLogin(message) {
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

$("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  refresh(true);
});

// ------------------------------------------------------------------ formatting

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d${String(Math.floor((s % 86400) / 3600)).padStart(2, "0")}h`;
}

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB"];
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u += 1;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(1)} ${units[u]}`;
}

function when(iso) {
  if (!iso) return "-";
  const t = new Date(iso);
  if (Number.isNaN(t.getTime())) return String(iso);
  return `${t.toLocaleString()} (${age((Date.now() - t.getTime()) / 1000)} ago)`;
}

function stateClass(state) {
  const s = String(state || "").toUpperCase();
  if (s === "RUNNING") return "ok";
  if (["FATAL", "BACKOFF", "EXITED", "FAILED"].includes(s)) return "bad";
  return "warn";
}

/** ready / starting / failed, in the words `flared status` uses. */
function readiness(bot) {
  if (bot.readiness) return bot.readiness;
  const s = String(bot.state || "").toUpperCase();
  if (["FATAL", "BACKOFF", "EXITED", "FAILED"].includes(s) || bot.error) return "failed";
  const platforms = (bot.hermes && bot.hermes.platforms) || {};
  const connected = Object.values(platforms).some((p) => p === "connected");
  return s === "RUNNING" && connected ? "ready" : "starting";
}

// ------------------------------------------------------------------ status

/** One deployment's status, or the Worker's {groups: {G: status}} merged into one. */
function normalize(data) {
  if (!data || !data.groups) return { ...data, groups: null };
  const out = { bots: [], leases: [], cron: { jobs: [] }, configs: {}, groups: {}, flared: null };
  for (const [g, s] of Object.entries(data.groups)) {
    out.groups[g] = s;
    if (!s || s.error) continue;
    out.flared = out.flared || s.flared;
    out.configs[g] = s.config;
    for (const b of s.bots || []) if (!b.group || b.group === g) out.bots.push({ ...b, group: g });
    for (const l of s.leases || []) out.leases.push(l);
    for (const j of (s.cron && s.cron.jobs) || []) out.cron.jobs.push(j);
  }
  out.config = Object.values(out.configs)[0] || {};
  return out;
}

function renderHeader(st) {
  const f = st.flared || {};
  $("flared").textContent = f.version ? `flared ${f.version}, up ${age(f.uptime_s)}` : "";
  $("refreshed").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

function renderConfig(st) {
  const cfg = st.config || {};
  const facts = $("config-facts");
  facts.replaceChildren(
    el("dt", {}, "digest"),
    el("dd", { "data-testid": "digest" }, String(cfg.digest || "").slice(0, 12) || "-"),
    el("dt", {}, "loaded"),
    el("dd", {}, when(cfg.loaded_at)),
    el("dt", {}, "file"),
    el("dd", {}, cfg.path || "-"),
  );
  const reload = cfg.last_reload;
  if (reload) {
    const result = reload.applied ? "applied" : reload.unchanged ? "unchanged" : "refused";
    facts.append(el("dt", {}, "last reload"), el("dd", {}, `${result}, ${when(new Date(reload.at * 1000).toISOString())}`));
  }
  const problems = [...(cfg.error || []), ...(cfg.file_errors || [])];
  $("config-problem").textContent = problems.length
    ? `The file on disk is NOT applied (the running config is unchanged):\n${problems.join("\n")}`
    : "";
  if (st.groups) {
    for (const [g, s] of Object.entries(st.groups)) {
      if (s && s.error) facts.append(el("dt", {}, `group ${g}`), el("dd", { class: "error" }, s.error));
    }
  }
}

function snapshotSummary(snap) {
  if (!snap) return "-";
  const last = snap.last || {};
  const ok = snap.last_ok || {};
  let text = last.result || "none yet";
  if (ok.id) text += `, last good ${ok.id}${ok.age_s !== undefined ? ` ${age(ok.age_s)} ago` : ""}`;
  if (snap.next_due_in_s !== null && snap.next_due_in_s !== undefined) text += `, next in ${age(snap.next_due_in_s)}`;
  return text;
}

/** The stream of a bot's databases: the worst lag, or why it is paused, stalled or off. */
function streamSummary(stream) {
  if (!stream) return "-";
  if (!stream.enabled) return stream.reason ? `off: ${stream.reason}` : "off";
  if (!stream.streaming) return `paused: ${stream.reason || "not streamed yet"}`;
  const dbs = stream.databases || [];
  const stalled = dbs.filter((d) => d.state === "stalled");
  if (stalled.length) return stalled.map((d) => `${d.db} stalled${d.lag_s !== null ? ` (${Math.round(d.lag_s)} s behind)` : ""}: ${d.error}`).join("; ");
  const lags = dbs.map((d) => d.lag_s).filter((l) => l !== null && l !== undefined);
  return lags.length ? `${dbs.length} database${dbs.length === 1 ? "" : "s"}, ${Math.max(...lags).toFixed(1)} s behind` : "starting";
}

function botCard(bot) {
  const snap = bot.snapshots || {};
  const hermes = bot.hermes || {};
  const ready = readiness(bot);
  const hung = ready === "unresponsive" ? `gateway ${bot.detail}` : "";
  const error = bot.error || bot.last_error || hung || snap.fenced || snap.shrunk || snap.gate || "";
  const busy = (what) => view.busy.has(`${what}:${bot.name}`);
  const card = el(
    "article",
    { class: "bot", "data-bot": bot.name },
    el(
      "header",
      {},
      el("h3", {}, bot.name),
      el("span", { class: `badge ${stateClass(bot.state)}`, "data-testid": "state" }, String(bot.state || "?")),
      el("span", { class: `badge ${ready === "ready" ? "ok" : ready === "failed" || ready === "unresponsive" ? "bad" : "warn"}`, "data-testid": "readiness" }, ready),
      bot.group && bot.group !== "default" ? el("span", { class: "muted" }, `group ${bot.group}`) : null,
    ),
    el(
      "dl",
      { class: "facts" },
      el("dt", {}, "restarts"), el("dd", {}, String(bot.restarts ?? 0)),
      el("dt", {}, "pid"), el("dd", {}, String(bot.pid || "-")),
      el("dt", {}, "uptime"), el("dd", {}, age(bot.uptime_s)),
      el("dt", {}, "heartbeat"), el("dd", {}, hermes.heartbeat_age_s !== null && hermes.heartbeat_age_s !== undefined ? `${age(hermes.heartbeat_age_s)} ago` : "-"),
      bot.api ? [el("dt", {}, "API"), el("dd", {}, bot.api)] : null,
      el("dt", {}, "snapshots"), el("dd", { "data-testid": "snapshot-summary" }, snapshotSummary(snap)),
      el("dt", {}, "stream"), el("dd", { "data-testid": "stream-summary", class: bot.stream && bot.stream.stalled ? "error" : "" }, streamSummary(bot.stream)),
      snap.restore ? [el("dt", {}, "restore"), el("dd", {}, `${snap.restore.result || ""}${snap.restore.id ? ` ${snap.restore.id}` : ""}`)] : null,
    ),
    error ? el("p", { class: "error", "data-testid": "error" }, error) : null,
    el(
      "div",
      { class: "row" },
      el("button", { type: "button", disabled: busy("snapshot"), onclick: () => takeSnapshot(bot.name) }, busy("snapshot") ? "Snapshotting…" : "Snapshot now"),
      el("button", { type: "button", disabled: busy("restart"), onclick: () => restartBot(bot.name) }, busy("restart") ? "Restarting…" : "Restart"),
    ),
    historySection(bot.name),
  );
  return card;
}

function renderBots(st) {
  const bots = st.bots || [];
  const host = $("bots");
  if (!bots.length) {
    host.replaceChildren(el("p", { class: "muted" }, "No bots in this config."));
    return;
  }
  // Keep focus where it was across a refresh (keyboard users).
  const focused = document.activeElement && document.activeElement.closest && document.activeElement.closest("[data-bot]");
  const focusKey = focused ? [focused.dataset.bot, document.activeElement.textContent] : null;
  host.replaceChildren(...bots.map(botCard));
  if (focusKey) {
    const card = host.querySelector(`[data-bot="${CSS.escape(focusKey[0])}"]`);
    const again = card && [...card.querySelectorAll("button")].find((b) => b.textContent === focusKey[1]);
    if (again) again.focus();
  }
}

function renderLeases(st) {
  const leases = st.leases || [];
  if (!leases.length) {
    $("leases").replaceChildren(el("p", { class: "muted" }, "No leases in use."));
    return;
  }
  $("leases").replaceChildren(
    table(
      ["lease", "bot", "session", "profile", "mode", "idle expires", "busy"],
      leases.map((l) => [l.id, l.bot, l.session || "shared", l.profile, l.mode, age(l.idle_expires_in_s), String(l.busy ?? 0)]),
    ),
  );
}

/** Every cron job: the YAML's and the ones each agent made itself in chat (cron/jobs.json). */
function renderCron(st) {
  const jobs = (st.cron && st.cron.jobs) || [];
  if (!jobs.length) {
    $("cron").replaceChildren(el("p", { class: "muted" }, "No cron jobs."));
    return;
  }
  const result = (r) => (r && typeof r === "object" ? r.result : r) || "-";
  const future = (iso) => (iso ? new Date(iso).toLocaleString() : "-");
  $("cron").replaceChildren(
    table(
      ["cron job", "kind", "bot", "schedule", "next run", "last run", "result", "note"],
      jobs.map((j) => [
        j.name,
        j.source === "hermes" ? "agent's own" : j.kind === "agent" ? "agent (YAML)" : `${j.action} (YAML)`,
        j.bot || "-",
        j.schedule,
        j.enabled === false ? "disabled" : future(j.next_run),
        when(j.last_run),
        result(j.last_result),
        j.error || j.warning || j.note || "",
      ]),
    ),
  );
}

function table(head, rows) {
  return el(
    "div",
    { class: "scroll" },
    el("table", {}, el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col" }, h)))), el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c)))))),
  );
}

// ------------------------------------------------------------------ snapshot history

function historySection(bot) {
  const history = view.history[bot] || [];
  const stored = view.snapshots[bot] || [];
  const keep = view.config && view.config.snapshots && view.config.snapshots.keep;
  const retention = keep ? `The store keeps the last ${keep.last} snapshots${keep.max_age ? `, none older than ${keep.max_age}` : ""}.` : "";
  const storedIds = new Set(stored.map((s) => s.id));
  const rows = mergedHistory(history, stored);
  const byId = Object.fromEntries(stored.map((s) => [s.id, s]));
  const body = rows
    .slice()
    .reverse()
    .slice(0, 20)
    .map((h) =>
      el(
        "tr",
        { class: h.result === "ok" ? "" : "failed" },
        el("td", { "data-label": "time" }, when(h.at)),
        el("td", { "data-label": "size" }, bytes(h.packed_size ?? h.bytes_uploaded)),
        el("td", { "data-label": "duration" }, h.seconds !== undefined ? `${Number(h.seconds).toFixed(2)} s` : "-"),
        el("td", { "data-label": "trigger" }, h.trigger || "-"),
        el("td", { "data-label": "result" }, h.result === "ok" ? h.result : `${h.result}: ${h.reason || h.error || ""}`),
        el(
          "td",
          {},
          h.id && storedIds.has(h.id)
            ? el("button", { type: "button", class: "small", onclick: () => confirmRestore(bot, byId[h.id]) }, `Restore ${h.id}`)
            : h.id || "",
        ),
      ),
    );
  return el(
    "section",
    { class: "history" },
    el("h4", {}, "Snapshot history"),
    chart(rows.filter((h) => h.result === "ok").slice(-40)),
    retention ? el("p", { class: "muted" }, retention) : null,
    rows.length
      ? el(
          "div",
          { class: "scroll" },
          el(
            "table",
            { "data-testid": "history", class: "stack" },
            el("thead", {}, el("tr", {}, ["time", "size", "duration", "trigger", "result", ""].map((h) => el("th", { scope: "col" }, h)))),
            el("tbody", {}, body),
          ),
        )
      : el("p", { class: "muted" }, "No snapshots yet."),
  );
}

/**
 * One history, oldest first: this flared's attempts (with failures, trigger, duration)
 * and every snapshot the store holds that they do not name (taken before this state
 * dir existed, or by another machine). Either alone switched source after one snapshot.
 */
function mergedHistory(history, stored) {
  const named = new Set(history.map((h) => h.id).filter(Boolean));
  const fromStore = stored
    .filter((s) => !named.has(s.id))
    .map((s) => ({ at: s.created_at, id: s.id, packed_size: s.packed_size, result: "ok", trigger: "-" }));
  const t = (h) => new Date(h.at).getTime() || 0;
  return [...history, ...fromStore].sort((a, b) => t(a) - t(b));
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const n = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
  if (text !== undefined) n.textContent = text;
  return n;
}

/** Size (bars) and duration (line) of the recent snapshots, as a small SVG. */
function chart(points) {
  if (points.length < 2) return null;
  const w = 600;
  const h = 120;
  const pad = 28;
  const sizes = points.map((p) => p.packed_size ?? p.bytes_uploaded ?? 0);
  const secs = points.map((p) => Number(p.seconds || 0));
  const maxSize = Math.max(...sizes, 1);
  const maxSec = Math.max(...secs, 0.001);
  const step = (w - 2 * pad) / points.length;
  const root = svg("svg", { viewBox: `0 0 ${w} ${h}`, class: "chart", role: "img" });
  root.append(svg("title", {}, `size (bars, up to ${bytes(maxSize)}) and duration (line, up to ${maxSec.toFixed(2)} s) of the last ${points.length} snapshots`));
  points.forEach((p, i) => {
    const bh = ((h - 2 * pad) * sizes[i]) / maxSize;
    root.append(svg("rect", { x: pad + i * step + 1, y: h - pad - bh, width: Math.max(1, step - 2), height: bh, class: "bar" }));
  });
  const line = secs.map((s, i) => `${pad + i * step + step / 2},${h - pad - ((h - 2 * pad) * s) / maxSec}`).join(" ");
  root.append(svg("polyline", { points: line, class: "line" }));
  root.append(svg("text", { x: pad, y: 14, class: "label" }, `size ≤ ${bytes(maxSize)}`));
  root.append(svg("text", { x: w - pad, y: 14, class: "label end" }, `duration ≤ ${maxSec.toFixed(2)} s`));
  return root;
}

// ------------------------------------------------------------------ actions

function toast(text, kind = "info") {
  const node = el("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
  $("toasts").append(node);
  if (kind !== "busy") setTimeout(() => node.remove(), kind === "error" ? 15000 : 6000);
  return node;
}

async function act(key, label, fn) {
  if (view.busy.has(key)) return;
  view.busy.add(key);
  renderAll();
  const pending = toast(`${label}…`, "busy");
  try {
    const message = await fn((progress) => {
      pending.textContent = `${label}… ${progress}`;
    });
    toast(message, "ok");
  } catch (err) {
    if (err instanceof AuthError) showLogin(err.message);
    toast(`${label} failed: ${err.message}`, "error");
  } finally {
    pending.remove();
    view.busy.delete(key);
    view.lastSlow = 0; // history and listings again now
    refresh();
  }
}

/** Poll the daemon's progress for a bot while a long request runs (when the API offers it). */
function watchProgress(bot, report) {
  let stop = false;
  (async () => {
    while (!stop) {
      await new Promise((r) => setTimeout(r, 500));
      if (stop) break;
      try {
        const p = await call("GET", `/progress?bot=${encodeURIComponent(bot)}`);
        const step = p.step || (p.progress && p.progress.step);
        const done = p.bytes ?? (p.progress && p.progress.bytes);
        if (step) report(`${step}${done ? ` ${bytes(done)}` : ""}`);
      } catch {
        // no progress route here, or nothing running yet
      }
    }
  })();
  return () => {
    stop = true;
  };
}

function takeSnapshot(bot) {
  return act(`snapshot:${bot}`, `Snapshot of ${bot}`, async (report) => {
    const stop = watchProgress(bot, report);
    try {
      const data = await call("POST", "/snapshots", { bot });
      const r = (data.results || [])[0] || {};
      if (r.result === "unchanged") return `${bot}: unchanged since ${r.id || "the last snapshot"}: nothing uploaded`;
      return `${bot}: snapshot ${r.id} (${bytes(r.bytes_uploaded)}) in ${Number(r.seconds || 0).toFixed(2)} s`;
    } finally {
      stop();
    }
  });
}

function restartBot(bot) {
  return act(`restart:${bot}`, `Restart of ${bot}`, async () => {
    await call("POST", `/bots/${encodeURIComponent(bot)}/restart`);
    return `${bot}: gateway restarted`;
  });
}

$("reload").addEventListener("click", () =>
  act("reload:", "Config reload", async () => {
    const data = await call("POST", "/reload");
    const one = data.groups ? Object.values(data.groups)[0] || {} : data;
    if (one.unchanged) return "config unchanged";
    if (one.applied === false) throw new Error(messageOf(one, 400));
    return `config ${String(one.config_digest || "").slice(0, 12)} applied${one.changes && one.changes.length ? `: ${one.changes.join("; ")}` : ""}`;
  }),
);

async function confirmRestore(bot, snap) {
  const current = (view.status.bots || []).find((b) => b.name === bot) || {};
  const last = (current.snapshots && current.snapshots.last_ok) || {};
  $("confirm-title").textContent = `Restore ${bot} from ${snap.id}?`;
  $("confirm-body").replaceChildren(
    el(
      "dl",
      { class: "facts" },
      el("dt", {}, "snapshot"), el("dd", { "data-testid": "confirm-id" }, snap.id),
      el("dt", {}, "taken"), el("dd", {}, when(snap.created_at)),
      el("dt", {}, "size"), el("dd", {}, `${bytes(snap.packed_size)} packed${snap.raw_size ? `, ${bytes(snap.raw_size)} of files` : ""}`),
    ),
    el(
      "p",
      {},
      `This replaces ${bot}'s current Hermes home${last.id ? ` (last snapshot ${last.id})` : ""}: its gateway stops, the snapshot is put in place, the gateway starts again. The current home is kept as home.previous.`,
    ),
  );
  const dialog = $("confirm");
  dialog.returnValue = "";
  dialog.showModal();
  const answer = await new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true }));
  if (answer !== "ok") {
    toast(`Restore of ${bot} cancelled; nothing changed`);
    return;
  }
  await act(`restore:${bot}`, `Restore of ${bot} from ${snap.id}`, async (report) => {
    const stop = watchProgress(bot, report);
    try {
      const r = await call("POST", "/restore", { bot, id: snap.id });
      return `${bot}: restored ${r.id} in ${Number(r.seconds || 0).toFixed(2)} s`;
    } finally {
      stop();
    }
  });
}

// ------------------------------------------------------------------ logs

function renderLogSources(st) {
  const select = $("log-source");
  const wanted = [
    ...(st.bots || []).map((b) => [`bot:${b.name}`, `gateway: ${b.name}`]),
    ["source:flared", "flared"],
    ["source:supervisord", "supervisord"],
  ];
  const key = wanted.map((w) => w[0]).join(",");
  if (select.dataset.key !== key) {
    select.dataset.key = key;
    select.replaceChildren(...wanted.map(([v, label]) => el("option", { value: v }, label)));
    if (view.logSource && wanted.some((w) => w[0] === view.logSource)) select.value = view.logSource;
    view.logSource = select.value;
  }
}

$("log-source").addEventListener("change", (ev) => {
  view.logSource = ev.target.value;
  refreshLog();
});

async function refreshLog() {
  if (!view.logSource) return;
  const [kind, name] = view.logSource.split(":");
  const q = kind === "bot" ? `bot=${encodeURIComponent(name)}` : `source=${encodeURIComponent(name)}`;
  try {
    const data = await call("GET", `/logs?${q}&lines=200`);
    const pre = $("log");
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = (data.lines || []).join("\n") || "(empty)";
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  } catch (err) {
    $("log").textContent = `cannot read this log: ${err.message}`;
  }
}

// ------------------------------------------------------------------ refresh

function renderAll() {
  if (!view.status) return;
  renderHeader(view.status);
  renderConfig(view.status);
  renderBots(view.status);
  renderLeases(view.status);
  renderCron(view.status);
  renderLogSources(view.status);
}

async function refreshSlow(bots) {
  const now = Date.now();
  if (now - view.lastSlow < SLOW_REFRESH_MS) return false;
  view.lastSlow = now;
  try {
    const cfg = await call("GET", "/config");
    view.config = cfg.config || (cfg.groups && Object.values(cfg.groups)[0] && Object.values(cfg.groups)[0].config) || null;
  } catch {
    // shown through status
  }
  await Promise.all(
    bots.map(async (b) => {
      const q = `bot=${encodeURIComponent(b.name)}`;
      try {
        view.snapshots[b.name] = (await call("GET", `/snapshots?${q}`)).snapshots || [];
      } catch {
        view.snapshots[b.name] = view.snapshots[b.name] || [];
      }
      try {
        view.history[b.name] = (await call("GET", `/snapshots/history?${q}`)).history || [];
      } catch {
        view.history[b.name] = view.history[b.name] || [];
      }
    }),
  );
  return true;
}

let timer = 0;
async function refresh(first = false) {
  clearTimeout(timer);
  try {
    const st = normalize(await call("GET", "/status"));
    view.status = st;
    $("login").hidden = true;
    $("app").hidden = false;
    renderAll(); // the bots at once; their histories and the log follow
    if (await refreshSlow(st.bots || [])) renderAll();
    await refreshLog();
  } catch (err) {
    if (err instanceof AuthError) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(first ? "" : err.message);
      return; // no polling without credentials
    }
    $("refreshed").textContent = `cannot reach flared: ${err.message}`;
  }
  if (!document.hidden) timer = setTimeout(refresh, REFRESH_MS);
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden) refresh();
});

// A spent link keeps its message on screen; anything else starts from the stored session.
if ((await signInFromFragment()) !== false) refresh(true);
