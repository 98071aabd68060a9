// meshfed dashboard: draws the hub's state document and redraws it on every server-sent event.
// Plain JavaScript, no build step, no outside assets. Every value from the hub is put into the
// page as text (createTextNode / textContent), never as markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const TYPES = [["cluster", "CDS"], ["listener", "LDS"], ["route", "RDS"], ["endpoint", "EDS"]];

function el(tag, attrs, ...children) {
  const node = tag.startsWith("svg:")
    ? document.createElementNS(SVG, tag.slice(4))
    : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.setAttribute("class", value);
    else if (key.startsWith("data-") || node instanceof SVGElement) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function replace(id, ...children) {
  const node = document.getElementById(id);
  node.replaceChildren(...children.flat());
  return node;
}

function ago(seconds) {
  const delta = Math.max(0, Date.now() / 1000 - seconds);
  if (delta < 60) return `${Math.round(delta)}s ago`;
  if (delta < 3600) return `${Math.round(delta / 60)}m ago`;
  return `${Math.round(delta / 3600)}h ago`;
}

function kv(map) {
  return Object.entries(map || {}).map(([k, v]) => `${k}=${v}`).join(", ");
}

// -- header and summary ---------------------------------------------------------------------
function renderHeader(doc) {
  document.getElementById("version").textContent = `v${doc.version}`;
  const ready = doc.readiness && doc.readiness.ready;
  const badge = document.getElementById("readiness");
  badge.textContent = ready ? "ready" : "not ready";
  badge.dataset.state = ready ? "ready" : "not-ready";
  badge.title = (doc.readiness && (doc.readiness.not_ready || []).join("\n")) || "";
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  const s = doc.summary;
  replace("summary",
    ["services", "endpoints", "conflicts", "registries", "proxies"].map((key) =>
      el("span", { "data-count": key }, el("b", {}, s[key]), key)));
}

// -- registries -----------------------------------------------------------------------------
function memberState(m) {
  if (m.degraded) return el("span", { class: "badge bad", title: m.degraded }, "degraded");
  if (m.late) return el("span", { class: "badge warn" }, "late");
  if (m.synced) return el("span", { class: "badge ok" }, "synced");
  return el("span", { class: "badge warn" }, "syncing");
}

function renderRegistries(doc) {
  const rows = doc.members.map((m) => {
    const last = m.last_event;
    return el("tr", { "data-registry": m.name },
      el("td", { class: "name" }, m.name),
      el("td", {}, m.kind),
      el("td", {}, m.precedence),
      el("td", { class: "state" }, memberState(m),
        m.degraded ? el("span", { class: "nack" }, m.degraded) : null),
      el("td", { class: "last-event" },
        last ? `${ago(last.at)}: ${last.hosts.join(", ")}${last.count > last.hosts.length ? " …" : ""}` : "—"));
  });
  document.querySelector("#registries tbody").replaceChildren(...rows);
  const degraded = (doc.readiness && doc.readiness.degraded) || [];
  replace("degraded", degraded.map((d) => el("li", {}, d)));
}

// -- catalog --------------------------------------------------------------------------------
function matches(service, filter) {
  if (!filter) return true;
  const hay = [service.hostname, ...service.registries,
    ...service.endpoints.flatMap((e) => [e.address, e.registry])].join(" ").toLowerCase();
  return hay.includes(filter);
}

function renderService(svc) {
  const ports = svc.ports.map((p) => `${p.number}/${p.protocol}${p.name ? ` (${p.name})` : ""}`);
  const endpoints = svc.endpoints.map((e) =>
    el("tr", { "data-address": e.address, "data-registry": e.registry },
      el("td", { class: "address mono" }, e.address),
      el("td", { class: "ports mono" }, kv(e.ports)),
      el("td", { class: "registry" }, el("span", { class: "registry-tag" }, e.registry)),
      el("td", { class: `health ${e.healthy ? "healthy" : "unhealthy"}` },
        e.healthy ? "healthy" : "unhealthy"),
      el("td", { class: "labels mono" }, kv(e.labels)),
      el("td", { class: "identity mono" }, e.identity || "")));
  return el("div", { class: `service${svc.conflict ? " conflict" : ""}`, "data-host": svc.hostname },
    el("div", { class: "head" },
      el("span", { class: "host mono" }, svc.hostname),
      svc.conflict ? el("span", { class: "badge bad" }, "conflict") : null,
      el("span", { class: "muted" }, ports.join(", ")),
      el("span", { class: "muted" }, `${svc.healthy_endpoints}/${svc.endpoints.length} healthy`),
      el("span", { class: "registries" },
        svc.registries.map((r) => el("span", { class: "registry-tag" }, r)))),
    endpoints.length
      ? el("table", { class: "endpoints" },
          el("thead", {}, el("tr", {}, ["address", "ports", "source registry", "health", "labels",
            "identity"].map((h) => el("th", {}, h)))),
          el("tbody", {}, endpoints))
      : el("p", { class: "muted" }, "no endpoints"));
}

function renderCatalog(doc) {
  const filter = document.getElementById("filter").value.trim().toLowerCase();
  replace("conflicts", doc.conflicts.length
    ? el("div", { class: "conflict-list" },
        el("b", {}, `${doc.conflicts.length} conflict(s), decided by registry precedence`),
        el("ul", {}, doc.conflicts.map((c) => el("li", { "data-conflict": c.hostname }, c.message))))
    : []);
  replace("catalog", doc.services.filter((s) => matches(s, filter)).map(renderService));
  document.getElementById("left-out").textContent = doc.services_left_out
    ? `${doc.services_left_out} more services not shown` : "";
}

// -- proxies --------------------------------------------------------------------------------
function renderProxies(doc) {
  const rows = doc.proxies.map((p) =>
    el("tr", { "data-proxy": p.proxy },
      el("td", { class: "mono" }, p.proxy, el("div", { class: "muted" }, p.peer || "")),
      el("td", {}, p.protocol),
      el("td", { class: p.ready ? "healthy" : "unhealthy" }, p.ready ? "yes" : "no"),
      TYPES.map(([type]) => {
        const t = p.types[type] || { status: "NOT REQUESTED" };
        const word = t.status.split(" ")[0];
        return el("td", { class: `type-${type}`, "data-status": t.status },
          el("span", { class: `status status-${word}` }, t.status),
          t.resources !== undefined ? el("span", { class: "muted" }, ` ${t.resources}`) : null,
          t.error ? el("span", { class: "nack" }, t.error) : null);
      })));
  document.querySelector("#proxies tbody").replaceChildren(...rows);
  document.getElementById("proxies-empty").hidden = rows.length > 0;
}

// -- Mixer ----------------------------------------------------------------------------------
function renderMixer(doc) {
  const mixer = doc.mixer;
  document.getElementById("mixer-empty").textContent = mixer
    ? (mixer.rules.length ? "" : "Mixer has no rules.") : "Mixer is not enabled on this hub.";
  const rows = (mixer ? mixer.rules : []).map((r) =>
    el("tr", { "data-rule": r.name },
      el("td", { class: "mono" }, r.name),
      el("td", { class: "mono" }, r.match),
      el("td", {}, r.actions.join("; ")),
      el("td", { class: "hits" }, r.hits),
      el("td", { class: r.errors ? "unhealthy" : "" }, r.errors)));
  document.querySelector("#rules tbody").replaceChildren(...rows);
  replace("mixer-problems", (mixer ? mixer.problems : []).map((p) => el("li", {}, p)));
}

// -- service graph --------------------------------------------------------------------------
function renderGraph(doc) {
  const graph = doc.graph;
  const svg = document.getElementById("graph");
  const empty = document.getElementById("graph-empty");
  if (!graph || !graph.edges.length) {
    svg.replaceChildren();
    svg.style.display = "none";
    empty.textContent = graph ? "No telemetry reported yet." : "Mixer is not enabled on this hub.";
    return;
  }
  svg.style.display = "";
  empty.textContent = graph.dropped ? `${graph.dropped} requests on edges beyond the limit` : "";
  const W = 800, H = 360, R = 26;
  const n = graph.nodes.length;
  const at = {};
  graph.nodes.forEach((name, i) => {
    const a = (2 * Math.PI * i) / n - Math.PI / 2;
    at[name] = n === 1 ? [W / 2, H / 2]
      : [W / 2 + (W / 2 - 120) * Math.cos(a), H / 2 + (H / 2 - 50) * Math.sin(a)];
  });
  const defs = el("svg:defs", {},
    el("svg:marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
      markerHeight: 7, orient: "auto-start-reverse" }, el("svg:path", { d: "M0,0 L10,5 L0,10 z" })));
  const edges = graph.edges.map((e) => {
    const [x1, y1] = at[e.source], [x2, y2] = at[e.destination];
    const len = Math.hypot(x2 - x1, y2 - y1) || 1;
    const ux = (x2 - x1) / len, uy = (y2 - y1) / len;
    const rate = `${(100 * e.error_rate).toFixed(1)}% err`;
    return el("svg:g", { class: `edge${e.errors ? " errors" : ""}`, "data-source": e.source,
      "data-destination": e.destination, "data-requests": e.requests, "data-errors": e.errors },
      el("svg:line", { x1: x1 + ux * R, y1: y1 + uy * R, x2: x2 - ux * (R + 3),
        y2: y2 - uy * (R + 3), "marker-end": "url(#arrow)" }),
      el("svg:text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 6 }, `${e.requests} req · ${rate}`));
  });
  const nodes = graph.nodes.map((name) => {
    const [x, y] = at[name];
    return el("svg:g", { class: "node", "data-node": name },
      el("svg:circle", { cx: x, cy: y, r: R }),
      el("svg:text", { x, y: y + R + 14 }, name));
  });
  svg.replaceChildren(defs, ...edges, ...nodes);
}

// -- wiring ---------------------------------------------------------------------------------
let latest = null;
let updates = 0;

function render(doc) {
  latest = doc;
  updates += 1;
  renderHeader(doc);
  renderRegistries(doc);
  renderCatalog(doc);
  renderProxies(doc);
  renderMixer(doc);
  renderGraph(doc);
  document.body.dataset.updates = String(updates);
}

function setLive(state, text) {
  const badge = document.getElementById("live");
  badge.dataset.state = state;
  badge.textContent = text;
}

function connect() {
  const source = new EventSource("/dashboard/events");
  source.addEventListener("open", () => setLive("live", "live"));
  source.addEventListener("state", (event) => {
    setLive("live", "live");
    render(JSON.parse(event.data));
  });
  // EventSource reconnects by itself (the hub sends retry:); only show that it is trying.
  source.addEventListener("error", () => setLive("connecting", "reconnecting"));
}

document.getElementById("filter").addEventListener("input", () => latest && renderCatalog(latest));
connect();
