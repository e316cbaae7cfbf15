// llm4tag review UI: three pages over the service's own HTTP API (no build step, no library).
// Every text from the service goes into the page through textContent, never as HTML.
"use strict";

const $ = (selector) => document.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== null && value !== undefined) node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// -- settings: the reviewer's name and the API key live in this browser only

for (const [id, key] of [["reviewer", "llm4tag.reviewer"], ["api-key", "llm4tag.key"]]) {
  const input = document.getElementById(id);
  input.value = localStorage.getItem(key) || "";
  input.addEventListener("change", () => localStorage.setItem(key, input.value.trim()));
}

function writeHeaders(extra = {}) {
  const headers = { "Content-Type": "application/json", ...extra };
  const key = localStorage.getItem("llm4tag.key");
  if (key) headers.Authorization = `Bearer ${key}`;
  const reviewer = localStorage.getItem("llm4tag.reviewer");
  if (reviewer) headers["X-Reviewer"] = reviewer;
  return headers;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? `${body.error}${body.field ? ` (${body.field})` : ""}` : `HTTP ${response.status}`;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

function toast(message, isError = false) {
  const box = $("#toast");
  box.textContent = message;
  box.className = isError ? "error" : "";
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 4000);
}

function percent(value) {
  return value === null || value === undefined ? "–" : `${(100 * value).toFixed(1)}%`;
}

function confidenceCell(value, cut) {
  const width = value === null || value === undefined ? 0 : Math.round(80 * value);
  return el("td", {}, el("span", { class: value < cut ? "bar low" : "bar", style: `width:${width}px` }), percent(value));
}

function chips(tags, cls = "chip") {
  return (tags || []).map((t) => el("span", { class: cls }, t));
}

// -- pages

const pages = ["tag", "queue", "vocabulary"];

function show(page) {
  if (!pages.includes(page)) page = "tag";
  for (const name of pages) $(`#page-${name}`).hidden = name !== page;
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.page === page);
  if (page === "queue") loadQueue();
  if (page === "vocabulary" && !$("#vocab-table tbody").children.length) loadVocabulary(true);
}

window.addEventListener("hashchange", () => show(location.hash.slice(1)));

// -- Tag

let cut = 0.5;

function newId() {
  return `ui-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

async function vocabularyEntries(tags) {
  if (!tags.length) return {};
  const query = tags.map((t) => `tag=${encodeURIComponent(t)}`).join("&");
  const found = await api(`/v1/vocabulary?${query}&limit=${Math.min(100, tags.length)}`);
  return Object.fromEntries(found.tags.map((t) => [t.tag, t]));
}

$("#tag-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("#tag-text").value.trim();
  if (!text) return;
  const id = $("#tag-id").value.trim() || newId();
  $("#tag-button").disabled = true;
  $("#tag-status").textContent = "tagging…";
  try {
    const answer = await api("/v1/tag", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ items: [{ id, text }], candidates: true, dropped: true }),
    });
    const row = answer.items[0];
    const via = [...new Set([...row.tags, ...(row.dropped || [])].flatMap((t) => t.via || []))];
    const [knowledge, vocabulary] = await Promise.all([
      api(`/v1/knowledge?samples=${encodeURIComponent([...row.knowledge.samples, ...via].join(","))}` +
          `&snippets=${encodeURIComponent(row.knowledge.snippets.join(","))}`),
      vocabularyEntries([...row.tags, ...(row.dropped || [])].map((t) => t.tag)),
    ]);
    renderTagging(row, answer.timings_ms, knowledge, vocabulary);
    $("#tag-status").textContent = `item ${id}`;
    refreshPendingCount();
  } catch (error) {
    $("#tag-status").textContent = "";
    toast(`Tagging failed: ${error.message}`, true);
  } finally {
    $("#tag-button").disabled = false;
  }
});

function renderTagging(row, timings, knowledge, vocabulary) {
  $("#tag-result").hidden = false;
  const body = $("#tags-table tbody");
  body.replaceChildren();
  const judged = [...row.tags.map((t) => ({ ...t, kept: true })), ...(row.dropped || []).map((t) => ({ ...t, kept: false }))];
  for (const tag of judged) {
    const vias = (tag.via || []).map((id) => {
      const sample = knowledge.samples[id];
      return el("div", { class: "via" }, el("span", { class: "meta" }, id), sample ? ` ${sample.text}` : "");
    });
    const broader = (vocabulary[tag.tag] || {}).broader || [];
    body.append(el("tr", { class: tag.kept ? "kept" : "dropped", "data-tag": tag.tag },
      el("td", {}, tag.tag), confidenceCell(tag.confidence, cut), el("td", {}, tag.source),
      el("td", {}, vias.length ? vias : "–"), el("td", {}, broader.length ? chips(broader) : "–")));
  }
  if (!row.tags.length) body.prepend(el("tr", { class: "no-tag" }, el("td", { colspan: 5 }, `No tag: ${row.no_tag || "none was kept"}.`)));
  $("#generated").textContent = row.generated.join(", ") || "–";

  const samples = $("#samples");
  samples.replaceChildren();
  for (const id of row.knowledge.samples) {
    const sample = knowledge.samples[id];
    samples.append(el("li", { "data-sample": id },
      el("div", { class: "meta" }, `${id}${sample && sample.source === "feedback" ? " · feedback" : ""}`),
      el("div", {}, sample ? sample.text : "(not found)"),
      sample ? el("div", {}, chips(sample.correct), chips(sample.incorrect, "chip not")) : null));
  }
  if (!row.knowledge.samples.length) samples.append(el("li", { class: "note" }, "none"));
  const snippets = $("#snippets");
  snippets.replaceChildren();
  for (const id of row.knowledge.snippets) {
    const snippet = knowledge.snippets[id];
    snippets.append(el("li", {}, el("div", { class: "meta" }, id), el("div", {}, snippet ? snippet.text : "(not found)")));
  }
  if (!row.knowledge.snippets.length) snippets.append(el("li", { class: "note" }, "none"));

  const timingRows = $("#timings tbody");
  timingRows.replaceChildren();
  const total = timings.total || 1;
  for (const [stage, ms] of Object.entries(timings)) {
    timingRows.append(el("tr", {}, el("td", {}, stage), el("td", {}, `${ms.toFixed(1)} ms`),
      el("td", {}, el("span", { class: "bar", style: `width:${Math.max(2, Math.round(300 * ms / total))}px` }))));
  }

  const candidates = $("#candidates-table tbody");
  candidates.replaceChildren();
  for (const c of row.candidates || []) {
    candidates.append(el("tr", {}, el("td", {}, c.tag), el("td", {}, c.score.toFixed(3)),
      el("td", {}, c.source), el("td", {}, (c.via || []).join(", ") || "–")));
  }
}

// -- Review queue

async function refreshPendingCount() {
  try {
    const queue = await api("/v1/review/queue?limit=1");
    $("#pending-count").textContent = queue.counts.pending || "";
  } catch (_) { /* no queue on this service */ }
}

async function loadQueue() {
  const decided = $("#queue-decided").checked;
  $("#queue-status").textContent = "loading…";
  try {
    const queue = await api(`/v1/review/queue?state=${decided ? "decided" : "pending"}&limit=100`);
    cut = queue.cut;
    $("#pending-count").textContent = queue.counts.pending || "";
    $("#queue-summary").textContent =
      `${queue.counts.pending} pending, ${queue.counts.decided} decided. Tags with confidence in ` +
      `[${queue.band[0].toFixed(2)}, ${queue.band[1].toFixed(2)}] around the cut ${queue.cut.toFixed(2)}; most uncertain first.`;
    const list = $("#queue-list");
    list.replaceChildren(...queue.entries.map((entry) => (decided ? decidedCard(entry) : pendingCard(entry))));
    if (!queue.entries.length) list.append(el("li", { class: "note" }, decided ? "No decisions yet." : "Nothing to review."));
    $("#queue-status").textContent = "";
  } catch (error) {
    $("#queue-status").textContent = "";
    toast(`Queue: ${error.message}`, true);
  }
}

$("#queue-refresh").addEventListener("click", loadQueue);
$("#queue-decided").addEventListener("change", loadQueue);

function describeEntry(entry) {
  return [
    el("div", { class: "meta" }, `#${entry.entry} · item ${entry.item_id} · ${entry.origin} · ${entry.kept ? "kept" : "dropped"} by the cut`),
    el("div", { class: "text" }, entry.text),
    el("div", {}, el("span", { class: "chip" }, entry.tag), " ", confidenceCell(entry.confidence, cut).childNodes[0],
      percent(entry.confidence), entry.source ? el("span", { class: "meta" }, ` · ${entry.source}`) : null,
      entry.via && entry.via.length ? el("span", { class: "meta" }, ` · via ${entry.via.join(", ")}`) : null),
  ];
}

function decidedCard(entry) {
  const what = entry.decision === "replace" ? `replaced by ${entry.replacement}` : `${entry.decision}ed`;
  return el("li", { "data-entry": entry.entry }, el("div", {}, describeEntry(entry)),
    el("div", { class: "decided" }, `${what}${entry.reviewer ? ` by ${entry.reviewer}` : ""}`));
}

function pendingCard(entry) {
  const card = el("li", { "data-entry": entry.entry, "data-tag": entry.tag, "data-item": entry.item_id });
  const replaceInput = el("input", { placeholder: "replace with…", class: "replace-input", autocomplete: "off" });
  const replaceButton = el("button", { class: "secondary replace", type: "button", disabled: "" }, "Replace");
  const complete = autocomplete(replaceInput, (tag) => { replaceInput.value = tag; replaceButton.disabled = false; });
  replaceInput.addEventListener("input", () => { replaceButton.disabled = true; });
  const decide = (decision) => async () => {
    for (const button of card.querySelectorAll("button")) button.disabled = true;
    try {
      await sendDecision(entry, decision, replaceInput.value.trim());
      card.remove();
      toast(`#${entry.entry}: ${decision === "replace" ? `replaced by ${replaceInput.value.trim()}` : `${decision}ed`}`);
      refreshPendingCount();
    } catch (error) {
      toast(`#${entry.entry}: ${error.message}`, true);
      if (error.status === 409) card.remove();
      else for (const button of card.querySelectorAll("button")) button.disabled = false;
    }
  };
  card.append(
    el("div", {}, describeEntry(entry)),
    el("div", { class: "actions" },
      el("button", { class: "accept", type: "button", onclick: decide("accept") }, "Accept"),
      el("button", { class: "reject", type: "button", onclick: decide("reject") }, "Reject"),
      complete, replaceButton),
  );
  replaceButton.addEventListener("click", decide("replace"));
  return card;
}

// A decision is feedback on the item, naming the queue entry it decides: durable before the 200.
async function sendDecision(entry, decision, replacement) {
  const body = { id: entry.item_id, text: entry.text, ...JSON.parse(entry.fields || "{}") };
  if (decision === "accept") body.tags = [entry.tag];
  if (decision === "reject") body.incorrect = [entry.tag];
  if (decision === "replace") { body.tags = [replacement]; body.incorrect = [entry.tag]; }
  return api("/v1/feedback", {
    method: "POST",
    headers: writeHeaders({ "X-Review-Entry": String(entry.entry) }),
    body: JSON.stringify(body),
  });
}

// Vocabulary search as you type (GET /v1/tags), picked with the mouse or the arrow keys.
function autocomplete(input, onPick) {
  const box = el("div", { class: "autocomplete" }, input);
  const list = el("ul", { class: "suggestions", hidden: "" });
  box.append(list);
  let active = -1;
  let seq = 0;
  const close = () => { list.hidden = true; active = -1; };
  const pick = (tag) => { close(); onPick(tag); };
  input.addEventListener("input", async () => {
    const q = input.value.trim();
    const mine = ++seq;
    if (!q) return close();
    try {
      const found = await api(`/v1/tags?q=${encodeURIComponent(q)}&limit=8`);
      if (mine !== seq) return;
      list.replaceChildren(...found.tags.map((t) =>
        el("li", { "data-tag": t.tag, title: t.description || "", onmousedown: (e) => { e.preventDefault(); pick(t.tag); } }, t.tag)));
      list.hidden = !found.tags.length;
      active = -1;
    } catch (_) { close(); }
  });
  input.addEventListener("keydown", (event) => {
    const items = [...list.children];
    if (list.hidden || !items.length) return;
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      active = (active + (event.key === "ArrowDown" ? 1 : items.length - 1)) % items.length;
      items.forEach((item, i) => item.classList.toggle("active", i === active));
    } else if (event.key === "Enter" && active >= 0) {
      event.preventDefault();
      pick(items[active].dataset.tag);
    } else if (event.key === "Escape") close();
  });
  input.addEventListener("blur", () => setTimeout(close, 150));
  return box;
}

// -- Vocabulary

let vocabOffset = 0;
let vocabSeq = 0;

async function loadVocabulary(reset) {
  const q = $("#vocab-query").value.trim();
  if (reset) vocabOffset = 0;
  const mine = ++vocabSeq;
  try {
    const found = await api(`/v1/vocabulary?q=${encodeURIComponent(q)}&limit=50&offset=${vocabOffset}`);
    if (mine !== vocabSeq) return;
    const body = $("#vocab-table tbody");
    if (reset) body.replaceChildren();
    for (const t of found.tags) {
      const hierarchy = [];
      if (t.broader.length) hierarchy.push(el("div", {}, "broader: ", chips(t.broader)));
      if (t.narrower.length) hierarchy.push(el("div", {}, `narrower: ${t.narrower.length} tags`));
      body.append(el("tr", { "data-tag": t.tag },
        el("td", {}, el("div", {}, t.tag, t.new ? el("span", { class: "new", title: "no stored item carries it yet: recall offers it from its name and description" }, "new") : null),
          el("div", { class: "uri" }, t.uri), t.notation ? el("div", { class: "meta" }, t.notation) : null),
        el("td", {}, t.description || "–", t.synthetic.length ? el("div", { class: "synthetic", title: "written by the LLM (llm4tag augment): fits learn from them, nothing counts them as annotations" },
          `synthetic examples (${t.synthetic.length}): `, t.synthetic.slice(0, 3).map((x) => `“${x}”`).join(" ")) : null),
        el("td", {}, hierarchy.length ? hierarchy : "–"),
        el("td", { class: "count" }, String(t.count))));
    }
    vocabOffset += found.tags.length;
    $("#vocab-summary").textContent = `${vocabOffset} shown of ${found.vocabulary_size} tags${q ? " (matching)" : ""}`;
    $("#vocab-more").hidden = found.tags.length < 50;
  } catch (error) {
    toast(`Vocabulary: ${error.message}`, true);
  }
}

let vocabTimer = null;
$("#vocab-query").addEventListener("input", () => {
  clearTimeout(vocabTimer);
  vocabTimer = setTimeout(() => loadVocabulary(true), 200);
});
$("#vocab-more").addEventListener("click", () => loadVocabulary(false));

show(location.hash.slice(1));
refreshPendingCount();
