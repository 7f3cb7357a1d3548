// The auditors' console: a page over the HTTP API (/api/v1), no build step, no third-party code.
// Everything shown is put in the page as text (never as HTML), so content from records cannot run; an
// e-mail's HTML version is shown only in a sandboxed frame (no scripts, no same-origin access) whose
// response the server sandboxes too, with remote loads blocked. Parts open as downloads unless they are
// media, plain text or raster images. The session is an HttpOnly cookie set by POST /api/v1/session — an
// opaque session id, not the token — and state-changing requests carry the X-Archive-Console header the
// server requires with the cookie. Content needs a stated reason, asked for in a dialog before a record
// opens and sent with every request for it.
"use strict";

const API = "/api/v1";
const FACETS = ["channel", "agent", "policy", "hold", "finding", "month"];
const state = { me: null, reasons: JSON.parse(sessionStorage.getItem("archive.reasons") || "{}") };

// --- small helpers -------------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function show(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes.flat(Infinity).filter(n => n !== null && n !== undefined && n !== false));
}

function say(text, kind) {
  const box = document.getElementById("message");
  if (!text) { box.hidden = true; box.textContent = ""; return; }
  box.className = "message" + (kind === "info" ? " info" : "");
  box.textContent = text;
  box.hidden = false;
}

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `request failed (${status})`);
    this.status = status; this.body = body;
  }
}

async function api(path, { method = "GET", body, reason, form } = {}) {
  const headers = { "X-Archive-Console": "1" };
  if (reason) headers["X-Archive-Reason"] = encodeURIComponent(reason);
  let payload;
  if (form) payload = form;
  else if (body !== undefined) { headers["Content-Type"] = "application/json"; payload = JSON.stringify(body); }
  const r = await fetch(API + path, { method, headers, body: payload, credentials: "same-origin" });
  if (r.status === 204) return null;
  const doc = await r.json().catch(() => null);
  if (r.status === 401 && path !== "/session") { state.me = null; route(); }
  if (!r.ok) {
    if (doc && Array.isArray(doc.detail)) {  // the schema's own 422: name the field
      throw new ApiError(r.status, { message: doc.detail.map(d => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ") });
    }
    throw new ApiError(r.status, doc);
  }
  return doc;
}

function fail(e) { say(e instanceof ApiError ? e.message : `Something went wrong: ${e}`); }

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

function duration(s) {
  if (s === null || s === undefined) return "";
  const t = Math.round(s), m = Math.floor(t / 60);
  return `${m}:${String(t % 60).padStart(2, "0")}`;
}

function people(participants) {
  return participants.map(p => `${p.name || p.id || "?"} (${p.role})`).join(", ");
}

function params() {
  const hash = location.hash || "#/search";
  const [path, query] = hash.slice(1).split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), q: new URLSearchParams(query || "") };
}

function go(path) { location.hash = path; }

function title(text) {
  document.title = `${text} · Compliance archive`;
  return h("h1", {}, text);
}

// --- sign-in -------------------------------------------------------------------------------------------

function loginView() {
  const input = h("input", { id: "token", type: "password", required: true, autocomplete: "off",
                             placeholder: "arc_…", "aria-describedby": "token-help" });
  const form = h("form", { class: "login card", onsubmit: async ev => {
    ev.preventDefault();
    try {
      state.me = await api("/session", { method: "POST", body: { token: input.value.trim() } });
      say("");
      setNav();
      if (!location.hash || location.hash === "#/login") go("#/search"); else route();
    } catch (e) { fail(e); input.select(); }
  } },
    title("Sign in"),
    h("label", { for: "token" }, "API token"),
    input,
    h("p", { id: "token-help", class: "muted" }, "An administrator makes one with ",
      h("code", {}, "archive token create NAME --role auditor"), ". It is checked once: the browser keeps only a session id (an HttpOnly cookie), which ends when you sign out, after 30 minutes without use, or when the token is revoked."),
    h("div", { class: "buttons" }, h("button", { type: "submit", class: "primary", id: "sign-in" }, "Sign in")));
  show(form);
  input.focus();
}

function setNav() {
  const nav = document.getElementById("nav");
  nav.hidden = !state.me;
  document.getElementById("sign-out").hidden = !state.me;
  document.getElementById("who").textContent = state.me ? `${state.me.actor} · ${state.me.role}` : "";
  const section = params().parts[0] || "search";
  for (const a of nav.querySelectorAll("a")) {
    if (a.dataset.section === section) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
}

// --- search --------------------------------------------------------------------------------------------

function recordRow(r) {
  return h("tr", {},
    h("td", {}, h("a", { href: `#/records/${r.record_id}`, class: "open" }, when(r.started_at))),
    h("td", {}, r.channel, r.direction ? h("div", { class: "muted" }, r.direction) : null),
    h("td", {}, people(r.participants)),
    h("td", {}, r.subject || h("span", { class: "muted" }, r.source.system + " " + r.source.interaction_id)),
    h("td", {}, r.parts.map(p => h("span", { class: "tag" }, p.name)), r.duration_s ? duration(r.duration_s) : ""),
    h("td", {}, r.findings.map(f => h("span", { class: "tag finding", title: f.detail || "" }, f.code)),
               r.holds.map(c => h("span", { class: "tag hold" }, "hold " + c))));
}

function resultsTable(records) {
  return h("table", { class: "results" },
    h("thead", {}, h("tr", {}, ["Started", "Channel", "Participants", "Subject / source", "Parts", "Findings, holds"]
      .map(t => h("th", { scope: "col" }, t)))),
    h("tbody", {}, records.map(recordRow)));
}

async function searchView(q) {
  const query = q.get("q") || "";
  const cursor = q.get("cursor") || "";
  const input = h("input", { id: "q", type: "search", value: query, "aria-label": "Search query",
                             placeholder: 'agent:1042 after:2024-01-01 "not a deposit"', autocomplete: "off" });
  const form = h("form", { class: "searchbar", role: "search", onsubmit: ev => {
    ev.preventDefault(); go(`#/search?q=${encodeURIComponent(input.value)}`);
  } }, input, h("button", { type: "submit", class: "primary" }, "Search"));
  const help = h("p", { class: "muted" }, "Fields: agent: customer: channel: policy: hold: finding: after: before: — words and \"phrases\", OR, NOT, ( ).");
  show(title("Search"), form, help, h("p", {}, "Searching…"));
  if (!query && !cursor) input.focus();
  let page;
  try {
    const qs = new URLSearchParams({ q: query, limit: "25", facets: FACETS.join(","), total: "true" });
    if (cursor) qs.set("cursor", cursor);
    page = await api(`/search?${qs}`);
  } catch (e) { fail(e); show(title("Search"), form, help); return; }
  say("");
  const facetBox = h("aside", { class: "facets", "aria-label": "Narrow by" },
    FACETS.filter(f => page.facets[f] && page.facets[f].length).map(f => h("section", {},
      h("h2", {}, f),
      h("ul", {}, page.facets[f].slice(0, 12).map(({ value, count }) => h("li", {},
        h("button", { type: "button", onclick: () => {
          const term = /[\s"]/.test(value) ? `${f}:"${value}"` : `${f}:${value}`;
          go(`#/search?q=${encodeURIComponent((query ? query + " " : "") + term)}`);
        } }, value), " ", h("span", { class: "count" }, count)))))));
  const pager = h("div", { class: "pager" },
    h("span", { class: "muted", id: "total" }, `${page.total ?? page.records.length} record(s)`),
    cursor ? h("button", { type: "button", onclick: () => history.back() }, "Previous page") : null,
    page.next ? h("button", { type: "button", id: "next-page", onclick: () =>
      go(`#/search?q=${encodeURIComponent(query)}&cursor=${encodeURIComponent(page.next)}`)
    }, "Next page") : null);
  const list = page.records.length ? resultsTable(page.records) : h("p", {}, "No record matches.");
  show(title("Search"), form, help, h("div", { class: "layout" }, facetBox, h("section", { "aria-label": "Results" }, list, pager)));
}

// --- a record ------------------------------------------------------------------------------------------

function askReason(recordId) {
  return new Promise(resolve => {
    const dialog = document.getElementById("reason-dialog");
    const input = document.getElementById("reason-input");
    const cancel = document.getElementById("reason-cancel");
    input.value = state.reasons[recordId] || "";
    const done = value => {
      dialog.removeEventListener("close", onClose);
      cancel.removeEventListener("click", onCancel);
      if (dialog.open) dialog.close();
      resolve(value);
    };
    const onClose = () => done(dialog.returnValue === "ok" && input.value.trim() ? input.value.trim() : null);
    const onCancel = () => { dialog.returnValue = "cancel"; done(null); };
    dialog.addEventListener("close", onClose);
    cancel.addEventListener("click", onCancel);
    dialog.returnValue = "";
    dialog.showModal();
    input.focus();
  });
}

function partUrl(rid, part, reason, download) {
  const qs = new URLSearchParams({ reason });
  if (download) qs.set("download", "true");
  return `${API}/records/${rid}/parts/${encodeURIComponent(part)}?${qs}`;
}

function player(rid, part, reason) {
  const media = String(part.media_type || "");
  const src = partUrl(rid, part.name, reason);
  let el = null;
  if (media.startsWith("audio/")) el = h("audio", { controls: true, preload: "metadata", src, id: `player-${part.name}` });
  else if (media.startsWith("video/")) el = h("video", { controls: true, preload: "metadata", src, id: `player-${part.name}` });
  if (!el) return null;
  const skip = secs => () => { el.currentTime = Math.max(0, Math.min(el.duration || 0, el.currentTime + secs)); };
  return h("div", { class: "player" }, h("div", { class: "muted" }, `${part.name} · ${media}`), el,
    h("div", { class: "buttons" },
      h("button", { type: "button", onclick: skip(-10), "aria-label": `Back 10 seconds in ${part.name}` }, "−10 s"),
      h("button", { type: "button", onclick: skip(10), "aria-label": `Forward 10 seconds in ${part.name}` }, "+10 s"),
      h("button", { type: "button", onclick: () => { if (el.duration) el.currentTime = el.duration / 2; },
                    id: `middle-${part.name}` }, "Jump to the middle")));
}

function htmlVersion(rid, reason) {
  // The sender's HTML, as it was written: in a frame with every sandbox restriction (no allow-scripts,
  // no allow-same-origin, no forms, no popups, no top navigation), from a response that the server
  // sandboxes as well and that may load nothing (no remote images, fonts or style sheets).
  const box = h("div", { id: "html-version" });
  box.append(h("button", { type: "button", id: "show-html", onclick: () => {
    box.replaceChildren(h("iframe", { id: "html-body", class: "html-body", sandbox: "", referrerpolicy: "no-referrer",
      title: "HTML version of the message (sandboxed: no scripts, no remote content)",
      src: `${API}/records/${rid}/html?${new URLSearchParams({ reason })}` }));
  } }, "Show the HTML version"));
  return [h("h2", { id: "h-html" }, "HTML version"),
    h("p", { class: "muted" }, "Shown as the sender wrote it, in a sandbox: no scripts, forms or remote images. The text above is the message's plain text."),
    box];
}

function thread(meta) {
  const names = {};
  for (const p of meta.participants || []) for (const k of ["id", "email", "phone"]) if (p[k]) names[p[k]] = p;
  return h("ol", { class: "thread" }, (meta.messages || []).map(m => {
    const who = names[m.from];
    return h("li", { class: who && who.role === "agent" ? "agent" : "customer" },
      h("span", { class: "from" }, who ? `${who.name || who.id} (${who.role})` : (m.from || "?")),
      h("span", { class: "at" }, when(m.at)),
      h("div", { class: "text" }, m.text || ""),
      (m.attachments || []).length ? h("div", { class: "muted" }, "attachments: " +
        m.attachments.map(a => a.filename || a.name || a.part || "?").join(", ")) : null);
  }));
}

function metaList(meta) {
  const rows = [["Source", `${meta.source.system} ${meta.source.interaction_id}`], ["Channel", meta.channel],
    ["Direction", meta.direction], ["Started", when(meta.started_at)], ["Ended", when(meta.ended_at)],
    ["Duration", duration(meta.duration_s)], ["Subject", meta.subject], ["Business line", meta.business_line],
    ["Product", meta.product], ["Jurisdiction", meta.jurisdiction], ["Language", meta.language],
    ["Tags", (meta.tags || []).join(", ")]];
  return h("dl", { class: "meta" }, rows.filter(([, v]) => v).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

async function recordView(rid) {
  show(title("Record"), h("p", { class: "muted" }, rid));
  let reason = state.reasons[rid];
  if (!reason) {
    reason = await askReason(rid);
    if (!reason) {
      say("Nothing shown: a reason is needed to open a record.", "info");
      show(title("Record"), h("p", {}, h("a", { href: "#/search" }, "Back to search"), " · ",
        h("button", { type: "button", onclick: () => recordView(rid) }, "Give a reason")));
      return;
    }
    state.reasons[rid] = reason;
    sessionStorage.setItem("archive.reasons", JSON.stringify(state.reasons));
  }
  let rec, why, trail;
  try {
    [rec, why] = await Promise.all([api(`/records/${rid}`, { reason }), api(`/records/${rid}/retention`)]);
    trail = await api(`/records/${rid}/audit`).catch(() => null);  // after the view, so it lists this one
  } catch (e) { fail(e); return; }
  say("");
  const meta = rec.metadata;
  const players = rec.parts.map(p => player(rid, p, reason)).filter(Boolean);
  const partsTable = h("table", {}, h("thead", {}, h("tr", {}, ["Part", "Type", "Bytes", "SHA-256", ""].map(t => h("th", {}, t)))),
    h("tbody", {}, rec.parts.map(p => h("tr", {}, h("td", {}, p.name), h("td", {}, p.media_type || ""),
      h("td", { class: "num" }, Number(p.size).toLocaleString("en")), h("td", {}, h("code", {}, p.sha256.slice(0, 16) + "…")),
      h("td", {}, h("a", { href: partUrl(rid, p.name, reason, true), download: "" }, "Download"))))));
  const d = why.decision || {};
  const retention = h("section", { "aria-labelledby": "h-retention" }, h("h2", { id: "h-retention" }, "Retention"),
    h("p", {}, why.explanation),
    h("dl", { class: "meta" }, h("dt", {}, "Kept until"), h("dd", {}, d.retain_until ? when(d.retain_until) : "—"),
      h("dt", {}, "Governing policy"), h("dd", {}, d.governing || "—"),
      h("dt", {}, "Legal holds"), h("dd", {}, why.holds.length ? why.holds.join(", ") : "none")),
    state.me.role === "legal" ? h("p", {}, h("a", { href: `#/holds?record=${rid}` }, "Place a legal hold on this record")) : null);
  const findings = rec.findings.length ? h("section", {}, h("h2", {}, "Findings"),
    h("ul", {}, rec.findings.map(f => h("li", {}, h("span", { class: "tag finding" }, f.code), " ", f.detail || "",
      f.policy ? h("span", { class: "muted" }, ` (${f.policy})`) : null)))) : null;
  const access = trail ? h("section", { "aria-labelledby": "h-access" }, h("h2", { id: "h-access" }, "Access history"),
    h("table", {}, h("thead", {}, h("tr", {}, ["#", "When", "Who", "Action", "Outcome", "Reason"].map(t => h("th", {}, t)))),
      h("tbody", {}, trail.events.slice(-50).reverse().map(e => h("tr", {}, h("td", { class: "num" }, e.seq), h("td", {}, when(e.time)),
        h("td", {}, `${e.actor} (${e.role})`), h("td", {}, e.action + (e.range ? ` bytes ${e.range}` : "")),
        h("td", {}, e.outcome), h("td", {}, e.reason || "")))))) : null;
  show(title(`${meta.channel} · ${when(meta.started_at)}`),
    h("p", { class: "muted" }, `${rid} · opened for: ${reason} · `,
      h("button", { type: "button", onclick: () => { delete state.reasons[rid]; sessionStorage.setItem("archive.reasons", JSON.stringify(state.reasons)); recordView(rid); } }, "Change reason")),
    h("div", { class: "cols" },
      h("section", {}, h("h2", {}, "Details"), metaList(meta), h("h2", {}, "Participants"),
        h("ul", {}, meta.participants.map(p => h("li", {}, `${p.name || p.id || ""} — ${p.role}`,
          [p.id && p.name ? ` · id ${p.id}` : "", p.phone ? ` · ${p.phone}` : "", p.account ? ` · account ${p.account}` : "",
           p.email ? ` · ${p.email}` : ""].join(""))))),
      h("section", {}, players.length ? [h("h2", {}, "Playback"), players] : null,
        (meta.messages || []).length ? [h("h2", {}, meta.channel === "email" ? "Messages" : "Conversation"), thread(meta)] : null,
        rec.parts.some(p => p.name === "body-html") ? htmlVersion(rid, reason) : null,
        rec.transcript ? [h("h2", {}, "Transcript"), h("pre", { class: "transcript" }, rec.transcript)] : null)),
    findings, h("h2", {}, "Parts"), partsTable, retention, access);
}

// --- findings ------------------------------------------------------------------------------------------

async function findingsView(q) {
  show(title("Findings"), h("p", {}, "Loading…"));
  let all;
  try { all = await api(`/search?${new URLSearchParams({ q: "", limit: "1", facets: "finding,policy" })}`); }
  catch (e) { fail(e); return; }
  const codes = (all.facets.finding || []).map(f => f.value);
  const chosen = q.get("code");
  const query = chosen ? `finding:${chosen}` : codes.map(c => `finding:${c}`).join(" OR ");
  let page = { records: [] };
  if (query) {
    try { page = await api(`/search?${new URLSearchParams({ q: query, limit: "100", total: "true" })}`); }
    catch (e) { fail(e); return; }
  }
  show(title("Findings"),
    h("p", {}, "Dual-recording and completeness checks made at ingest: a mandated disclosure missing from the transcript, a missing video part, a gap in a recording."),
    codes.length ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Finding"), h("th", {}, "Records"))),
      h("tbody", {}, all.facets.finding.map(f => h("tr", {},
        h("td", {}, h("a", { href: `#/findings?code=${encodeURIComponent(f.value)}` }, f.value)), h("td", { class: "num" }, f.count)))))
      : h("p", {}, "No record has a finding."),
    chosen ? h("p", {}, h("a", { href: "#/findings" }, "All findings")) : null,
    page.records.length ? [h("h2", {}, chosen ? `Records with ${chosen}` : "Records with a finding"), resultsTable(page.records)] : null);
}

// --- holds and approvals -------------------------------------------------------------------------------

async function holdsView(q) {
  show(title("Legal holds"), h("p", {}, "Loading…"));
  let holds, pending = null;
  try {
    holds = (await api("/holds")).holds;
    pending = (await api("/approvals").catch(() => null));
  } catch (e) { fail(e); return; }
  const caseIn = h("input", { id: "hold-case", required: true, placeholder: "CASE-2024-17" });
  const recordsIn = h("input", { id: "hold-records", value: q.get("record") || "", placeholder: "record ids, separated by spaces" });
  const queryIn = h("input", { id: "hold-query", placeholder: "or a query, e.g. customer:C-881" });
  const reasonIn = h("input", { id: "hold-reason", required: true, placeholder: "litigation notice of 2024-06-01" });
  const place = h("form", { class: "card", onsubmit: async ev => {
    ev.preventDefault();
    try {
      const r = await api("/holds", { method: "POST", body: { case: caseIn.value.trim(), reason: reasonIn.value.trim(),
        records: recordsIn.value.split(/[\s,]+/).filter(Boolean), query: queryIn.value.trim() || null } });
      say(`Hold ${r.case} placed on ${r.records.length} record(s).`, "info");
      holdsView(new URLSearchParams());
    } catch (e) { fail(e); }
  } }, h("h2", {}, "Place a hold"), h("label", { for: "hold-case" }, "Case"), caseIn,
    h("label", { for: "hold-records" }, "Records"), recordsIn, h("label", { for: "hold-query" }, "Query"), queryIn,
    h("label", { for: "hold-reason" }, "Reason"), reasonIn,
    h("div", { class: "buttons" }, h("button", { type: "submit", class: "primary", id: "place-hold" }, "Place hold")));

  const releaseForm = c => {
    const why = h("input", { id: `release-reason-${c.case}`, required: true, "aria-label": `Why release ${c.case}`, placeholder: "why release" });
    return h("form", { class: "inline", onsubmit: async ev => {
      ev.preventDefault();
      try {
        const r = await api(`/holds/${encodeURIComponent(c.case)}/release-requests`, { method: "POST", body: { reason: why.value.trim() } });
        say(`Release of ${c.case} requested (${r.request}); a second legal reviewer must approve it.`, "info");
        holdsView(new URLSearchParams());
      } catch (e) { fail(e); }
    } }, why, h("button", { type: "submit", id: `request-release-${c.case}` }, "Request release"));
  };
  const table = holds.length ? h("table", {}, h("thead", {}, h("tr", {}, ["Case", "State", "Records", "Placed", "Reason", ""].map(t => h("th", {}, t)))),
    h("tbody", {}, holds.map(c => {
      const placed = c.history.find(x => x.action === "place") || {};
      return h("tr", {}, h("td", {}, h("a", { href: `#/search?q=${encodeURIComponent("hold:" + c.case)}` }, c.case)),
        h("td", {}, c.active ? "active" : "released"), h("td", { class: "num" }, c.records.length),
        h("td", {}, `${when(placed.at)} by ${placed.by || "?"}`), h("td", {}, placed.reason || ""),
        h("td", {}, c.active ? releaseForm(c) : ""));
    }))) : h("p", {}, "No legal hold has been placed.");

  const approvals = pending ? h("section", {}, h("h2", {}, "Waiting for a second person"),
    pending.pending.length ? h("table", {}, h("thead", {}, h("tr", {}, ["Request", "Asks", "By", "Reason", ""].map(t => h("th", {}, t)))),
      h("tbody", {}, pending.pending.map(p => {
        const why = h("input", { id: `approve-reason-${p.id}`, required: true, "aria-label": `Why approve ${p.id}`, placeholder: "why approve" });
        const mine = state.me && p.requested_by === state.me.actor;
        return h("tr", {}, h("td", {}, p.id), h("td", {}, `${p.action} ${p.target.case || p.target.object || ""}`),
          h("td", {}, `${p.requested_by} at ${when(p.requested_at)}`), h("td", {}, p.reason || ""),
          h("td", {}, mine ? h("span", { class: "muted" }, "your request: another person approves") :
            h("form", { class: "inline", onsubmit: async ev => {
              ev.preventDefault();
              try {
                const r = await api(`/approvals/${encodeURIComponent(p.id)}`, { method: "POST", body: { reason: why.value.trim() } });
                say(`Approved ${r.approved}` + (r.released ? `: ${r.released.length} record(s) released from ${r.case}.` : "."), "info");
                holdsView(new URLSearchParams());
              } catch (e) { fail(e); }
            } }, why, h("button", { type: "submit", id: `approve-${p.id}` }, "Approve"))));
      }))) : h("p", { class: "muted" }, "Nothing is waiting.")) : null;
  show(title("Legal holds"), table, approvals, state.me && ["legal"].includes(state.me.role) ? place : null);
}

// --- exports -------------------------------------------------------------------------------------------

let exportTimer = null;

async function exportsView(q) {
  clearTimeout(exportTimer);
  let jobs;
  try { jobs = (await api("/exports")).exports; } catch (e) { fail(e); show(title("Evidence exports")); return; }
  const caseIn = h("input", { id: "export-case", required: true, placeholder: "CASE-2024-17" });
  const queryIn = h("input", { id: "export-query", value: q.get("q") || "", placeholder: "hold:CASE-2024-17, or customer:C-881" });
  const recordsIn = h("input", { id: "export-records", placeholder: "or record ids, separated by spaces" });
  const reasonIn = h("input", { id: "export-reason", required: true, placeholder: "production to opposing counsel" });
  const form = h("form", { class: "card", onsubmit: async ev => {
    ev.preventDefault();
    try {
      const job = await api("/exports", { method: "POST", body: { case: caseIn.value.trim(), reason: reasonIn.value.trim(),
        query: queryIn.value.trim() || null, records: recordsIn.value.split(/[\s,]+/).filter(Boolean) } });
      say(`Export ${job.id} started for ${job.records.length} record(s).`, "info");
      exportsView(new URLSearchParams());
    } catch (e) { fail(e); }
  } }, h("h2", {}, "New evidence bundle"),
    h("p", { class: "muted" }, "A signed BagIt bundle: the records' parts, metadata, retention, chain of custody and audit proofs. Verify it anywhere with archive verify-bundle."),
    h("label", { for: "export-case" }, "Case"), caseIn, h("label", { for: "export-query" }, "Query"), queryIn,
    h("label", { for: "export-records" }, "Records"), recordsIn, h("label", { for: "export-reason" }, "Reason"), reasonIn,
    h("div", { class: "buttons" }, h("button", { type: "submit", class: "primary", id: "start-export" }, "Start export")));
  const table = jobs.length ? h("table", { id: "export-jobs" }, h("thead", {}, h("tr", {}, ["Export", "Case", "Records", "State", "Started", ""].map(t => h("th", {}, t)))),
    h("tbody", {}, jobs.map(j => h("tr", {}, h("td", {}, j.id), h("td", {}, j.case), h("td", { class: "num" }, j.records.length),
      h("td", { class: `state-${j.state}` }, j.state === "running" && j.total_bytes ? `running ${Math.floor(100 * j.done_bytes / j.total_bytes)}%` :
        j.state + (j.error ? `: ${j.error}` : "")),
      h("td", {}, `${when(j.created_at)} by ${j.actor}`),
      h("td", {}, j.state === "done" ? h("a", { href: `${API}/exports/${j.id}/bundle`, id: `download-${j.id}` },
        `Download (${(j.size / 1e6).toFixed(1)} MB)`) : ""))))) : h("p", {}, "No export yet.");
  show(title("Evidence exports"), table, form);
  if (jobs.some(j => j.state === "running")) exportTimer = setTimeout(() => { if (params().parts[0] === "exports") exportsView(q); }, 1000);
}

// --- status --------------------------------------------------------------------------------------------

async function statusView() {
  let s;
  try { s = await api("/status"); } catch (e) { fail(e); return; }
  const out = h("div", { id: "verify-result" });
  const rows = Object.entries(s).map(([k, v]) => [h("dt", {}, k.replaceAll("_", " ")),
    h("dd", {}, typeof v === "object" && v !== null ? JSON.stringify(v) : String(v))]);
  show(title("Status"), h("dl", { class: "meta" }, rows),
    h("h2", {}, "Audit trail"),
    h("button", { type: "button", id: "verify-audit", onclick: async () => {
      out.textContent = "Verifying…";
      try {
        const r = await api("/audit/verify");
        out.textContent = r.ok ? `Verified: ${r.events} events in ${r.batches} batches, ${r.checkpoints} signed checkpoint(s).`
          : `FAILED at position ${r.problems[0].position}: ${r.problems[0].message}`;
      } catch (e) { fail(e); out.textContent = ""; }
    } }, "Verify the audit trail"), out);
}

// --- routing -------------------------------------------------------------------------------------------

async function route() {
  clearTimeout(exportTimer);
  if (!state.me) {
    try { state.me = await api("/session"); } catch { state.me = null; }
  }
  setNav();
  if (!state.me) { loginView(); return; }
  const { parts, q } = params();
  const views = { search: () => searchView(q), records: () => recordView(parts[1]), findings: () => findingsView(q),
                  holds: () => holdsView(q), exports: () => exportsView(q), status: () => statusView() };
  const view = views[parts[0]] || views.search;
  await view();
  if (document.activeElement === document.body) document.getElementById("main").focus({ preventScroll: true });
}

window.addEventListener("hashchange", () => { say(""); route(); });
document.addEventListener("keydown", ev => {
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
  if (ev.key === "/" && !typing && state.me) {
    ev.preventDefault();
    const box = document.getElementById("q");
    if (box) box.focus(); else go("#/search");
  }
});
document.getElementById("sign-out").addEventListener("click", async () => {
  await api("/session", { method: "DELETE" }).catch(() => null);
  state.me = null; state.reasons = {}; sessionStorage.removeItem("archive.reasons");
  go("#/login");
  route();
});
route();
