// Lookalike web page: upload a photo (or click a result) and show similar listings.
"use strict";
const $ = (id) => document.getElementById(id);
const drop = $("drop"), file = $("file"), statusLine = $("status"), results = $("results");

function options() {
  return { k: Number($("k").value) || 10, aggregation: $("aggregation").value,
           in_stock_only: $("in-stock").checked };
}

async function run(request, label) {
  statusLine.textContent = `Searching ${label}…`;
  const started = performance.now();
  const response = await fetch("/v1/search", request);
  const body = await response.json();
  if (!response.ok) {
    statusLine.textContent = `Error ${response.status}: ${JSON.stringify(body.detail)}`;
    results.replaceChildren();
    return;
  }
  statusLine.textContent = `${body.results.length} listings in ${Math.round(performance.now() - started)} ms`;
  render(body.results);
}

function searchFile(f) {
  $("preview").src = URL.createObjectURL(f);
  const form = new FormData();
  form.append("image", f);
  for (const [k, v] of Object.entries(options())) form.append(k, String(v));
  run({ method: "POST", body: form }, f.name);
}

function searchImage(imageId) {
  $("preview").src = `/v1/images/${imageId}/content`;
  run({ method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ image_id: imageId, ...options() }) }, "from a result");
}

function badge(inventory) {
  const b = document.createElement("span");
  if (inventory === null) { b.className = "badge unknown"; b.textContent = "stock unknown"; }
  else if (inventory > 0) { b.className = "badge in"; b.textContent = `${inventory} in stock`; }
  else { b.className = "badge out"; b.textContent = "out of stock"; }
  return b;
}

function thumb(match, cls) {
  const img = document.createElement("img");
  img.src = `/v1/images/${match.image_id}/thumbnail?size=${cls === "main" ? 320 : 96}`;
  img.alt = `image ${match.image_id.slice(0, 8)}, score ${match.score.toFixed(3)}`;
  img.title = `score ${match.score.toFixed(3)}: click to search from this image`;
  img.className = cls;
  img.addEventListener("click", () => searchImage(match.image_id));
  return img;
}

function render(listings) {
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
    thumbs.append(...r.images.map((m) => thumb(m, "")));
    body.append(title, score, badge(r.inventory), thumbs);
    card.append(thumb(r.images[0], "main"), body);
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
