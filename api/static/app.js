// Lookalike web page: click a photo of the catalogue (catalogue.js), upload a photo, or click a
// result, and show the listings that look like it.
"use strict";
const $ = (id) => document.getElementById(id);
const drop = $("drop"), file = $("file"), statusLine = $("status"), results = $("results");

function options() {
  const opts = { k: Number($("k").value) || 10, aggregation: $("aggregation").value,
                 in_stock_only: $("in-stock").checked };
  if ($("model").value) opts.model = $("model").value;
  return opts;
}

// The models the store holds, with their coverage; the served one is chosen. Another model is
// listed (so a re-embed's progress shows) and the API explains why it cannot search it here.
async function loadModels() {
  const select = $("model");
  try {
    const response = await fetch("/v1/models");
    if (!response.ok) return;
    const models = await response.json();
    select.replaceChildren(...models.map((m) => {
      const o = document.createElement("option");
      o.value = m.name;
      o.textContent = `${m.name} (${m.dim}-d, ${Math.round(m.coverage * 100)}%)${m.served ? "" : " – not served"}`;
      o.selected = m.served;
      return o;
    }));
  } catch (e) {
    select.replaceChildren();  // models unknown: searches use the served one
  }
}
loadModels();

// ---- Two views: the catalogue (the first screen), or a search's query and results. Entering ----
// ---- the results is a history entry, so the browser's Back returns to the catalogue.        ----
function showView(view) {
  const toResults = view === "results";
  if (toResults && $("results").hidden && history.state?.view !== "results") {
    history.pushState({ view: "results" }, "");
  }
  $("catalogue").hidden = toResults;
  $("query").hidden = $("results").hidden = !toResults;
  if (!toResults) {
    statusLine.textContent = "";
    window.dispatchEvent(new Event("lookalike:catalogue"));  // catalogue.js refreshes its page
  }
}

window.addEventListener("popstate", (e) => showView(e.state?.view === "results" ? "results" : "catalogue"));
$("back").addEventListener("click", () => {
  if (history.state?.view === "results") history.back();  // popstate shows the catalogue
  else showView("catalogue");
});

// ---- What was searched with. For a photo of a listing, the listing itself (name, stock, its  ----
// ---- photos) is shown here, as the query: a search by image leaves the image's own listing   ----
// ---- out of the ranking (it would come first with the very photo, taking a place of k), so  ----
// ---- the visitor sees what they clicked beside what else looks like it.                       ----
let shownQuery = 0;

function queryPanel(src, title) {
  const img = document.createElement("img");
  img.src = src;
  img.alt = "the photo searched with";
  img.className = "query-photo";
  img.addEventListener("error", () => { img.src = NO_PREVIEW; }, { once: true });
  const heading = document.createElement("h2");
  heading.id = "query-title";
  heading.tabIndex = -1;  // focus lands here as a search starts (the clicked photo is hidden)
  heading.textContent = title;
  const text = document.createElement("div");
  text.className = "query-text";
  text.append(heading);
  $("query-body").replaceChildren(img, text);
  shownQuery += 1;
  return text;
}

async function showQueryListing(imageId, listingId) {
  const text = queryPanel(`/v1/images/${imageId}/thumbnail?size=320`, "Listings that look like this photo");
  const mine = shownQuery;
  $("query-body").dataset.imageId = imageId;
  $("query-body").dataset.listingId = listingId || "";
  if (!listingId) return;
  const response = await fetch(`/v1/listings/${listingId}`, withKey({}));
  if (!response.ok || mine !== shownQuery) return;  // unknown, or a newer search took the panel
  const listing = await response.json();
  const name = listing.listing_name || listingId.slice(0, 8);
  text.querySelector("h2").textContent = `Listings that look like “${name}”`;
  const n = listing.images.length;
  const note = document.createElement("p");
  note.className = "note";
  note.append(badge(listing.inventory),
    ` ${n} photo${n === 1 ? "" : "s"}; the one searched with is outlined. ` +
    "Its own listing is left out of the results below.");
  const photos = document.createElement("div");
  photos.className = "thumbs";
  photos.append(...listing.images.map((i) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = i.image_id === imageId ? "current" : "";
    b.setAttribute("aria-label", `search with photo ${i.image_id.slice(0, 8)} of ${name}`);
    const img = document.createElement("img");
    img.src = `${i.thumbnail}?size=96`;
    img.alt = "";
    img.loading = "lazy";
    img.addEventListener("error", () => { img.src = NO_PREVIEW; }, { once: true });
    b.append(img);
    b.addEventListener("click", () => searchImage(i.image_id, listingId));
    return b;
  }));
  text.append(note, photos);
}

async function run(path, request, label) {
  showView("results");
  statusLine.textContent = `Searching ${label}…`;
  const started = performance.now();
  let response = await fetch(path, withKey(request));
  let body = await response.json();
  if (response.status === 202) {  // engine spark, past the API's wait: read the answer later
    statusLine.textContent = `Searching ${label}… (queued)`;
    ({ response, body } = await pendingAnswer(response.headers.get("location") || `/v1/search/${body.query_id}`));
  }
  if (!response.ok) {
    statusLine.textContent = `Error ${response.status}: ${JSON.stringify(body.detail)}`;
    results.replaceChildren();
    return;
  }
  statusLine.textContent = `${body.results.length} listings in ${Math.round(performance.now() - started)} ms`;
  render(body.results);
}

// A search answered 202 (queued for the Spark search service): its answer, once it is there.
async function pendingAnswer(where) {
  const started = performance.now();
  for (;;) {
    const response = await fetch(where, withKey({}));
    const body = await response.json().catch(() => ({ detail: response.statusText }));
    const pending = response.status === 404 && String(body.detail).includes("pending");
    if (!pending || performance.now() - started > SEARCHABLE_TIMEOUT_MS) return { response, body };
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

function searchFile(f) {
  queryPanel(URL.createObjectURL(f), `Listings that look like your photo (${f.name})`);
  $("query-body").dataset.imageId = $("query-body").dataset.listingId = "";
  const form = new FormData();
  form.append("image", f);
  for (const [k, v] of Object.entries(options())) form.append(k, String(v));
  run("/v1/search/image", { method: "POST", body: form }, f.name);
}

// A search by an indexed image (a photo of the catalogue, of a result, or just added); its own
// listing, when known, is shown as the query.
function searchImage(imageId, listingId) {
  showQueryListing(imageId, listingId);
  const searching = run("/v1/search", { method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ image_id: imageId, ...options() }) }, "from this photo");
  $("query-title").focus();  // the clicked photo is hidden now: focus goes to what was searched
  return searching;
}

function badge(inventory) {
  const b = document.createElement("span");
  if (inventory === null) { b.className = "badge unknown"; b.textContent = "stock unknown"; }
  else if (inventory > 0) { b.className = "badge in"; b.textContent = `${inventory} in stock`; }
  else { b.className = "badge out"; b.textContent = "out of stock"; }
  return b;
}

function thumb(match, cls, listingId) {
  const img = document.createElement("img");
  img.src = `/v1/images/${match.image_id}/thumbnail?size=${cls === "main" ? 320 : 96}`;
  if (cls !== "main") img.loading = "lazy";
  img.alt = `image ${match.image_id.slice(0, 8)}, score ${match.score.toFixed(3)}`;
  img.title = `score ${match.score.toFixed(3)}: click to search from this image`;
  img.className = cls;
  img.addEventListener("click", () => searchImage(match.image_id, listingId));
  img.addEventListener("error", () => { img.src = NO_PREVIEW; }, { once: true });
  return img;
}

function render(listings) {
  rememberListings(listings);
  results.replaceChildren(...listings.map((r, i) => {
    const card = document.createElement("article");
    card.className = "card";
    card.dataset.listingId = r.listing_id;
    const body = document.createElement("div");
    body.className = "body";
    const title = document.createElement("h2");
    title.textContent = `${i + 1}. ${r.listing_name || r.listing_id.slice(0, 8)}`;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = r.score.toFixed(3);
    const thumbs = document.createElement("div");
    thumbs.className = "thumbs";
    thumbs.append(...r.images.map((m) => thumb(m, "", r.listing_id)));
    body.append(title, score, badge(r.inventory), thumbs);
    card.append(thumb(r.images[0], "main", r.listing_id), body);
    return card;
  }));
}

file.addEventListener("change", () => file.files[0] && searchFile(file.files[0]));
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files[0]) searchFile(e.dataTransfer.files[0]);
});

// ---- Add a photo to a listing: POST /v1/images (needs an API key), then wait until the ----
// ---- index has it and show the listing. The key is never part of the page: it is typed ----
// ---- in, or handed over in the link's #key=... fragment (which no request carries), and ----
// ---- kept in this tab's sessionStorage only.                                            ----
const KEY_STORAGE = "lookalike.apiKey";
const SEARCHABLE_TIMEOUT_MS = 120_000;
// Shown where an image's pixels cannot be served (yet): uploads' thumbnails may be missing.
const NO_PREVIEW = "data:image/svg+xml," + encodeURIComponent(
  '<svg xmlns="http://www.w3.org/2000/svg" width="96" height="96"><rect width="96" height="96" ' +
  'fill="#eceef2"/><text x="48" y="52" font-size="11" text-anchor="middle" fill="#5b6475">' +
  'no preview</text></svg>');

function apiKey() { return sessionStorage.getItem(KEY_STORAGE) || ""; }

function withKey(request) {
  const key = apiKey();
  return key ? { ...request, headers: { ...(request.headers || {}), "X-API-Key": key } } : request;
}

function takeKeyFromLink() {
  const found = location.hash.match(/(?:^#|&)key=([^&]+)/);
  if (!found) return;
  sessionStorage.setItem(KEY_STORAGE, decodeURIComponent(found[1]));
  history.replaceState(null, "", location.pathname + location.search);  // out of the address bar
}

function addStatus(text) { $("add-status").textContent = text; }

function detail(body) {
  return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
}

function rememberListings(listings) {
  const names = $("listing-names");
  const known = new Set([...names.options].map((o) => o.value));
  for (const r of listings) {
    if (r.listing_name && !known.has(r.listing_name)) {
      known.add(r.listing_name);
      names.append(new Option(r.listing_name));
    }
  }
}

async function addPhoto(event) {
  event.preventDefault();
  const f = $("add-file").files[0], listing = $("add-listing").value.trim(), key = $("add-key").value.trim();
  if (!f || !listing) { addStatus("Choose a photo and name a listing."); return; }
  if (!key) { addStatus("Enter the API key that `lookalike demo` printed."); return; }
  sessionStorage.setItem(KEY_STORAGE, key);
  const form = new FormData();
  form.append("image", f);
  form.append("listing", listing);
  $("add-submit").disabled = true;
  const started = performance.now();
  try {
    addStatus(`Uploading ${f.name}…`);
    const response = await fetch("/v1/images", { method: "POST", headers: { "X-API-Key": key }, body: form });
    const body = await response.json().catch(() => ({ detail: response.statusText }));
    if (!response.ok) {
      if (response.status === 401 || response.status === 403) sessionStorage.removeItem(KEY_STORAGE);
      addStatus(`Not added (${response.status}): ${detail(body)}`);
      return;
    }
    const searchable = await waitSearchable(body.image_id, started);
    if (!searchable) {
      addStatus(`Queued, but not searchable after ${SEARCHABLE_TIMEOUT_MS / 1000} s: is an extract worker running?`);
      return;
    }
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    addStatus(`Added to “${listing}”: searchable ${seconds} s after the upload.`);
    const local = URL.createObjectURL(f);
    await showAdded(body.listing_id, body.image_id, local);
    searchImage(body.image_id, body.listing_id);  // listings like it (its own listing left out)
    document.querySelector(".query-photo").src = local;  // the server may not keep its pixels yet
  } catch (error) {
    addStatus(`Not added: ${error}`);
  } finally {
    $("add-submit").disabled = false;
  }
}

// Searchable once a search from the image answers (404 until the index holds its vector).
async function waitSearchable(imageId, started) {
  const request = { method: "POST", headers: { "content-type": "application/json" },
                    body: JSON.stringify({ image_id: imageId, k: 1 }) };
  while (performance.now() - started < SEARCHABLE_TIMEOUT_MS) {
    const response = await fetch("/v1/search", withKey(request));
    if (response.ok) return true;
    if (response.status !== 404) throw new Error(`search answered ${response.status}`);
    addStatus(`Queued; extracting… ${((performance.now() - started) / 1000).toFixed(1)} s`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  return false;
}

async function showAdded(listingId, imageId, localUrl) {
  const response = await fetch(`/v1/listings/${listingId}`, withKey({}));
  if (!response.ok) return;
  const listing = await response.json();
  const card = document.createElement("article");
  card.className = "card added";
  card.dataset.listingId = listingId;
  const body = document.createElement("div");
  body.className = "body";
  const title = document.createElement("h2");
  const n = listing.images.length;
  title.textContent = `${listing.listing_name} (${n} photo${n === 1 ? "" : "s"})`;
  const thumbs = document.createElement("div");
  thumbs.className = "thumbs";
  thumbs.append(...listing.images.map((i) => {
    const img = document.createElement("img");
    const isNew = i.image_id === imageId;
    img.src = `${i.thumbnail}?size=96`;
    img.alt = isNew ? "the photo just added" : `image ${i.image_id.slice(0, 8)}`;
    img.className = isNew ? "new" : "";
    img.dataset.imageId = i.image_id;
    // The server may not keep uploads' pixels yet: the new photo falls back to the local file.
    img.addEventListener("error", () => { img.src = isNew ? localUrl : NO_PREVIEW; }, { once: true });
    img.addEventListener("click", () => searchImage(i.image_id, listingId));
    return img;
  }));
  body.append(title, badge(listing.inventory), thumbs);
  card.append(body);
  $("added").replaceChildren(card);
}

function initAddPhoto() {
  takeKeyFromLink();
  $("add-key").value = apiKey();
  if (apiKey()) $("add").open = true;
  $("add-form").addEventListener("submit", addPhoto);
}

initAddPhoto();
