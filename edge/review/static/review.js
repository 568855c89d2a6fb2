// The review pages' behaviour: plain browser JavaScript, no build step. Every state change goes to the JSON API
// with the session's CSRF token (the page's <meta name="csrf">).
"use strict";

const csrf = () => document.querySelector('meta[name="csrf"]').content;

async function api(method, path, body) {
  const headers = { "X-CSRF-Token": csrf() };
  let payload = body;
  if (body !== undefined && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const response = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
  let data = {};
  try { data = await response.json(); } catch (e) { data = {}; }
  return { ok: response.ok, status: response.status, data };
}

function say(element, text, error) {
  if (!element) return;
  element.textContent = text;
  element.classList.toggle("error", Boolean(error));
}

function typing(event) {
  const t = event.target;
  return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT");
}

function loginPage() {
  const form = document.getElementById("login");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const field = (name) => form.elements.namedItem(name).value;
    const r = await api("POST", "/api/login", { user: field("user"), password: field("password") });
    if (r.ok) location.assign(form.dataset.next || "/queue");
    else say(document.getElementById("message"), r.data.error || "login failed", true);
  });
}

function logoutButton() {
  const button = document.getElementById("logout");
  if (!button) return;
  button.addEventListener("click", async () => {
    await api("POST", "/api/logout");
    location.assign("/login");
  });
}

function itemPage() {
  const box = document.getElementById("decide");
  const die = document.getElementById("die");
  if (!box || !die) return;
  const message = document.getElementById("message");
  const showOverlay = (which) => {
    die.src = die.dataset.base + "?overlay=" + which;
    const radio = document.querySelector(`input[name="overlay"][value="${which}"]`);
    if (radio) radio.checked = true;
  };
  document.querySelectorAll('input[name="overlay"]').forEach((radio) =>
    radio.addEventListener("change", () => showOverlay(radio.value)));
  let busy = false;
  const decide = async (disposition) => {
    if (busy) return;
    const body = { disposition };
    const comment = document.getElementById("comment");
    if (comment && comment.value.trim()) body.comment = comment.value.trim();
    if (disposition === "relabel") {
      const target = document.getElementById("relabel").value;
      if (!target) { say(message, "choose the class to relabel to", true); document.getElementById("relabel").focus(); return; }
      body.class = target;
    }
    busy = true;
    say(message, "sending…", false);
    const query = box.dataset.query;
    const r = await api("POST", `/api/captures/${encodeURIComponent(box.dataset.capture)}/decision${query}`, body);
    busy = false;
    if (!r.ok) { say(message, r.data.error || `refused (${r.status})`, true); return; }
    say(message, `${disposition}: recorded`, false);
    location.assign(r.data.next ? `/items/${encodeURIComponent(r.data.next)}${query}` : `/queue${query}`);
  };
  box.querySelectorAll("button[data-disposition]").forEach((button) =>
    button.addEventListener("click", () => decide(button.dataset.disposition)));
  const relabel = document.getElementById("relabel");
  if (relabel) relabel.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); decide("relabel"); }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && typing(event)) { event.target.blur(); return; }
    if (typing(event) || event.ctrlKey || event.metaKey || event.altKey) return;
    const canDecide = Boolean(document.getElementById("decision"));
    const key = event.key.toLowerCase();
    const actions = {
      "1": () => showOverlay("none"), "2": () => showOverlay("heatmap"), "3": () => showOverlay("attention"),
      "j": () => { const next = document.getElementById("next"); if (next) location.assign(next.href); },
    };
    if (canDecide) {
      Object.assign(actions, {
        "r": () => decide("real"), "f": () => decide("false"), "n": () => decide("novel"),
        "l": () => relabel.focus(), "c": () => document.getElementById("comment").focus(),
      });
    }
    if (actions[key]) { event.preventDefault(); actions[key](); }
  });
}

function calibrationPage() {
  document.querySelectorAll("section.profile").forEach((section) => {
    const img = section.querySelector("figure.trend img");
    section.querySelectorAll("a.plot").forEach((link) => link.addEventListener("click", (event) => {
      event.preventDefault();
      img.src = img.dataset.base + encodeURIComponent(link.dataset.class);
      section.querySelector(".plotted").textContent = link.dataset.class;
    }));
  });
  document.querySelectorAll("form.engineer").forEach((form) => {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const field = (name) => form.elements.namedItem(name).value;
      const action = field("action");
      const number = (name) => (field(name) === "" ? undefined : Number(field(name)));
      const body = { recipe: form.dataset.recipe, reason: field("reason") };
      if (action === "transfer") { body.from = field("from"); body.to = form.dataset.tool; }
      else { body.tool = form.dataset.tool; body.class = field("class"); }
      if (action === "override") { body.threshold = number("threshold"); body.lock_lots = number("lock_lots") || 0; }
      if (action === "bounds") {
        for (const name of ["lower", "upper", "fpr_budget"]) if (number(name) !== undefined) body[name] = number(name);
      }
      const r = await api("POST", `/api/calibration/${action}`, body);
      const message = form.nextElementSibling;
      if (r.ok) { say(message, `${action}: done`, false); location.reload(); }
      else say(message, r.data.error || `refused (${r.status})`, true);
    });
  });
}

function inspectPage() {
  const form = document.getElementById("inspect");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const message = document.getElementById("message");
    say(message, "inspecting…", false);
    const r = await api("POST", "/api/inspect", new FormData(form));
    if (!r.ok) { say(message, r.data.error || `refused (${r.status})`, true); return; }
    const d = r.data;
    say(message, `${d.decision} ${d.defect_class} in ${d.latency_ms} ms (not recorded)`, false);
    document.getElementById("heatmap").src = d.heatmap_png;
    const rows = [["decision", d.decision], ["class", `${d.defect_class} (${d.confidence.toFixed(3)})`],
      ["threshold", d.threshold === null ? "n/a" : d.threshold.toFixed(2)],
      ["anomaly", `${d.anomaly.score.toFixed(3)} ${d.anomaly.band}` +
        (d.anomaly.bands ? ` (pass < ${d.anomaly.bands.pass.toFixed(3)}, reject ≥ ${d.anomaly.bands.reject.toFixed(3)})` : "")],
      ["process log", d.process_present ? "given" : "none"], ["latency", `${d.latency_ms} ms`]]
      .concat(d.top_k.map((t) => [t.class, t.p.toFixed(3)]));
    const table = document.getElementById("facts");
    table.replaceChildren(...rows.map(([k, v]) => {
      const tr = document.createElement("tr");
      for (const text of [k, v]) { const td = document.createElement("td"); td.textContent = text; tr.appendChild(td); }
      return tr;
    }));
    document.getElementById("result").hidden = false;
  });
}

function similarPage() {
  const form = document.getElementById("similar-upload");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const message = document.getElementById("message");
    say(message, "searching…", false);
    const r = await api("POST", `/api/similar?k=${encodeURIComponent(form.dataset.k)}`, new FormData(form));
    if (!r.ok) { say(message, r.data.error || `refused (${r.status})`, true); return; }
    const q = r.data.query;
    say(message, `${r.data.hits.length} captured dies like the image (${q.decision} ${q.defect_class} by the live models)`, false);
    const cell = (text) => { const td = document.createElement("td"); td.textContent = text; return td; };
    document.querySelector("#hits tbody").replaceChildren(...r.data.hits.map((h) => {
      const tr = document.createElement("tr");
      const link = document.createElement("a");
      link.href = `/items/${encodeURIComponent(h.capture_id)}`;
      link.textContent = h.capture_id;
      const thumb = document.createElement("td");
      if (!h.gone) {
        const img = document.createElement("img");
        img.src = `/api/captures/${encodeURIComponent(h.capture_id)}/image.png`;
        img.width = 64; img.alt = `die ${h.capture_id}`; img.className = "thumb";
        thumb.appendChild(img);
      }
      const id = document.createElement("td"); id.appendChild(link);
      const review = h.review ? `${h.review.disposition} (${h.review.label}) by ${h.review.by}` : "not reviewed";
      tr.append(thumb, cell(h.similarity.toFixed(3)), id, cell(h.decision), cell(h.defect_class), cell(review),
        cell(h.tool_id), cell(h.lot_id), cell(h.wafer_id), cell(`${h.die[0]},${h.die[1]}`),
        cell(new Date(h.ts * 1000).toISOString().replace("T", " ").slice(0, 19)));
      return tr;
    }));
  });
}

document.addEventListener("DOMContentLoaded", () => {
  loginPage(); logoutButton(); itemPage(); calibrationPage(); inspectPage(); similarPage();
});
