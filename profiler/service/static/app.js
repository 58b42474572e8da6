// The explorer page: plain DOM calls over the service's JSON API, no build step.
// Every shopper-supplied string goes in through textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const keyInput = $("api-key");
keyInput.value = localStorage.getItem("profiler-api-key") || "";
keyInput.addEventListener("change", () => localStorage.setItem("profiler-api-key", keyInput.value));

let current = null; // {user_id} or {history}

async function call(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (keyInput.value) headers["X-API-Key"] = keyInput.value;
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) throw new Error(`${response.status}: ${data.detail || response.statusText}`);
  return data;
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function show(id, visible) { $(id).hidden = !visible; }

function renderTags(tags, note) {
  const list = $("tags");
  list.replaceChildren();
  $("tags-note").textContent = note || (tags && tags.length ? "" : "no tags yet");
  for (const tag of tags || []) {
    const item = el("li");
    item.dataset.tag = tag.tag;
    item.className = "tag";
    item.append(el("span", tag.tag, "tag-name"), el("span", tag.type, "tag-type"));
    const bar = el("span", null, "bar");
    bar.style.width = `${Math.round(tag.confidence * 8)}rem`;
    item.append(bar, el("span", tag.confidence.toFixed(2), "score"));
    if (tag.pinned) item.append(el("span", "pinned", "pinned"));
    if (current && current.user_id) {
      for (const action of ["pin", "remove"]) {
        const button = el("button", action === "pin" ? "Pin" : "Remove", `small tag-${action}`);
        button.addEventListener("click", () => changeTag(tag.tag, action));
        item.append(" ", button);
      }
    }
    for (const evidence of tag.evidence.slice(0, 2)) {
      const rating = evidence.rating === null ? "" : ` (${evidence.rating}★${evidence.rating_predicted ? " predicted" : ""})`;
      // a view, click or purchase has no text: name its item instead of an empty quote
      const what = evidence.snippet || (evidence.item_id ? `item ${evidence.item_id}` : "");
      item.append(el("div", `← ${evidence.kind}${rating}: ${what}`, "evidence"));
    }
    list.append(item);
  }
  show("tags-section", true);
}

function renderRecs(items) {
  const list = $("recs");
  list.replaceChildren();
  for (const item of items) {
    const row = el("li");
    row.className = "rec";
    row.dataset.itemId = item.item_id;
    row.append(el("strong", item.title || item.item_id), " ", el("span", `${item.item_id} · ${item.score === null ? "" : item.score.toFixed(3)}`, "score"));
    const reasons = item.reasons || {};
    const parts = [];
    if (reasons.channels) parts.push(`from ${reasons.channels.join(", ")}`);
    if (reasons.features) parts.push(reasons.features.slice(0, 3).map((f) => `${f.feature} ${f.contribution >= 0 ? "+" : ""}${Number(f.contribution).toFixed(2)}`).join(", "));
    if (reasons.closest) parts.push(`like “${(reasons.closest.title || reasons.closest.text || "").slice(0, 60)}”`);
    if (reasons.source) parts.push(`${reasons.source} (p=${Number(reasons.propensity).toFixed(2)})`);
    row.append(el("div", parts.join(" · "), "reasons"));
    if (current && current.user_id) {
      for (const [liked, label] of [[true, "Like"], [false, "Dislike"]]) {
        const button = el("button", label, `small ${liked ? "like" : "dislike"}`);
        button.addEventListener("click", () => feedback(item.item_id, liked));
        row.append(" ", button);
      }
    }
    list.append(row);
  }
  show("recs-section", true);
}

async function loadRecs() {
  const body = { ...current, k: 10 };
  const answer = await call("POST", "/recommend", body);
  renderRecs(answer.items);
}

function reset() {
  for (const id of ["tags", "centres", "recs", "events"]) $(id).replaceChildren();
  for (const id of ["who", "tags-section", "centres-section", "recs-section", "events-section"]) show(id, false);
}

async function lookUp(userId) {
  reset();
  current = { user_id: userId };
  status(`looking up ${userId}…`);
  const profile = await call("GET", `/users/${encodeURIComponent(userId)}/profile`);
  $("who-title").textContent = `Shopper ${profile.user_id}`;
  $("who-facts").textContent = `${profile.events} event(s); stored as ${profile.stored_id}`;
  show("who", true);
  renderTags(profile.tags, profile.tags_note);
  const centres = $("centres");
  centres.replaceChildren();
  for (const centre of profile.centres) {
    const row = el("li", `weight ${centre.weight.toFixed(2)}: `);
    row.append(centre.items.map((i) => i.title || i.item_id).join(" · "));
    centres.append(row);
  }
  show("centres-section", profile.centres.length > 0);
  const events = $("events");
  events.replaceChildren();
  for (const event of profile.recent_events) {
    const what = event.title || event.item_id || "";
    const text = event.text ? ` “${event.text.slice(0, 120)}”` : "";
    events.append(el("li", `${event.kind} ${what}${text}`));
  }
  show("events-section", profile.recent_events.length > 0);
  await loadRecs();
  status(`shopper ${userId}: ${profile.events} events`);
}

async function fromTexts(texts) {
  reset();
  current = { history: texts };
  status("profiling the texts…");
  show("who", true);
  $("who-title").textContent = "Anonymous shopper";
  $("who-facts").textContent = `${texts.length} text(s)`;
  show("centres-section", false);
  show("events-section", false);
  try {
    const tags = await call("POST", "/tags", { texts, joined: true });
    renderTags(tags[0].tags);
  } catch (error) {
    renderTags([], error.message);
  }
  await loadRecs();
  status("recommendations for the texts");
}

async function feedback(itemId, liked) {
  await call("POST", "/feedback", { user_id: current.user_id, item_id: itemId, liked });
  status(`feedback on ${itemId}: ${liked ? "liked" : "disliked"}; recommendations updated`);
  await loadRecs();
}

async function changeTag(tag, action) {
  const answer = await call("POST", `/users/${encodeURIComponent(current.user_id)}/tags`, { tag, action });
  renderTags(answer.tags);
  await loadRecs();
  status(`${action === "pin" ? "pinned" : "removed"} ${tag}`);
}

function guard(work) {
  return (event) => {
    event.preventDefault();
    work().catch((error) => status(error.message, true));
  };
}

$("user-form").addEventListener("submit", guard(() => lookUp($("user-id").value.trim())));
$("texts-form").addEventListener("submit", guard(async () => {
  const texts = $("texts").value.split("\n").map((t) => t.trim()).filter(Boolean);
  if (!texts.length) throw new Error("paste at least one text");
  return fromTexts(texts);
}));
