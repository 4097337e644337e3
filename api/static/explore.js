// Lookalike "Explore": the last analysis run on a 2-D map (a 2-D canvas drawn pixel by pixel,
// with a spatial grid for hover, so 100 000 points stay responsive), and galleries of clusters,
// outliers, misfits and near-duplicate groups. Reads /v1/analytics/* and /v1/listings/*.
"use strict";
const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "lookalike.apiKey"; // shared with the search page
const THUMB = 96;
const stats = { draws: [], hovers: [] }; // milliseconds, read by the page test
window.exploreStats = stats;

function withKey(request = {}) {
  const key = sessionStorage.getItem(KEY_STORAGE) || "";
  return key ? { ...request, headers: { ...(request.headers || {}), "X-API-Key": key } } : request;
}

async function getJSON(path) {
  const response = await fetch(path, withKey());
  const body = await response.json();
  if (!response.ok) throw new Error(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
  return body;
}

const thumb = (id) => `/v1/images/${id}/thumbnail?size=${THUMB}`;
const short = (id) => String(id).slice(0, 8);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function figure(imageId, caption, listingId, cls = "") {
  const img = el("img", { src: thumb(imageId), alt: caption, loading: "lazy", title: caption,
                          dataset: { imageId } });
  if (listingId) img.addEventListener("click", () => openListing(listingId, imageId));
  return el("figure", cls ? { class: cls } : {}, img, el("figcaption", {}, caption));
}

function stockText(inventory) {
  if (inventory === null || inventory === undefined) return "stock unknown";
  return inventory > 0 ? `${inventory} in stock` : "out of stock";
}

// -- colours: a fixed palette, then golden-ratio hues for many clusters ---------------------------
const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
                 "#bfef45", "#469990", "#9a6324", "#800000", "#808000", "#000075", "#a9a9a9"];

function hexRgb(hex) { const v = parseInt(hex.slice(1), 16); return [v >> 16, (v >> 8) & 255, v & 255]; }

function hslRgb(h, s, l) {
  const f = (n) => { const k = (n + h * 12) % 12; const a = s * Math.min(l, 1 - l);
                     return Math.round(255 * (l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1)))); };
  return [f(0), f(8), f(4)];
}

function clusterRgb(c) {
  return c < PALETTE.length ? hexRgb(PALETTE[c]) : hslRgb((c * 0.618033988749895) % 1, 0.65, 0.5);
}
const cssColour = (c) => `rgb(${clusterRgb(c).join(",")})`;

// -- the map ---------------------------------------------------------------------------------------
class PointMap {
  constructor(canvas, data) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.data = data;
    const n = (this.n = data.count);
    this.xs = new Float32Array(n);
    this.ys = new Float32Array(n);
    let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
    for (let i = 0; i < n; i++) {
      x0 = Math.min(x0, data.x[i]); x1 = Math.max(x1, data.x[i]);
      y0 = Math.min(y0, data.y[i]); y1 = Math.max(y1, data.y[i]);
    }
    const span = Math.max(x1 - x0, y1 - y0, 1e-9);
    for (let i = 0; i < n; i++) { // data space: the unit square, aspect kept
      this.xs[i] = (data.x[i] - x0) / span + (1 - (x1 - x0) / span) / 2;
      this.ys[i] = (data.y[i] - y0) / span + (1 - (y1 - y0) / span) / 2;
    }
    this.cluster = Int32Array.from(data.cluster);
    let k = 0;
    for (let i = 0; i < n; i++) k = Math.max(k, this.cluster[i] + 1);
    this.colours = new Uint32Array(k); // ABGR, for the little-endian pixel buffer
    for (let c = 0; c < k; c++) { const [r, g, b] = clusterRgb(c); this.colours[c] = 0xff000000 | (b << 16) | (g << 8) | r; }
    this.view = { cx: 0.5, cy: 0.5, zoom: 0.92 };
    this.selected = new Int32Array(0); // rows of the opened listing
    this.hovered = -1;
    this.image = this.ctx.createImageData(canvas.width, canvas.height);
    this.pixels = new Uint32Array(this.image.data.buffer);
    this.buildGrid();
  }

  buildGrid() { // points bucketed in a G x G grid of the unit square (counting sort)
    const G = (this.G = Math.max(16, Math.min(512, Math.round(Math.sqrt(this.n / 4)))));
    const cellOf = new Int32Array(this.n);
    const counts = new Int32Array(G * G + 1);
    for (let i = 0; i < this.n; i++) {
      const gx = Math.min(G - 1, Math.max(0, Math.floor(this.xs[i] * G)));
      const gy = Math.min(G - 1, Math.max(0, Math.floor(this.ys[i] * G)));
      cellOf[i] = gy * G + gx;
      counts[cellOf[i] + 1]++;
    }
    for (let c = 0; c < G * G; c++) counts[c + 1] += counts[c];
    this.cellStart = counts;
    this.cellItems = new Int32Array(this.n);
    const fill = counts.slice(0, G * G);
    for (let i = 0; i < this.n; i++) this.cellItems[fill[cellOf[i]]++] = i;
  }

  get size() { return Math.min(this.canvas.width, this.canvas.height); }
  toScreen(x, y) {
    const s = this.size * this.view.zoom;
    return [(x - this.view.cx) * s + this.canvas.width / 2, (y - this.view.cy) * s + this.canvas.height / 2];
  }
  toData(sx, sy) {
    const s = this.size * this.view.zoom;
    return [(sx - this.canvas.width / 2) / s + this.view.cx, (sy - this.canvas.height / 2) / s + this.view.cy];
  }

  draw() {
    const started = performance.now();
    const { width: W, height: H } = this.canvas;
    const px = this.pixels;
    px.fill(0xffffffff);
    const s = this.size * this.view.zoom;
    const ox = W / 2 - this.view.cx * s, oy = H / 2 - this.view.cy * s;
    const dot = (this.n < 5000 ? 2 : 0) + (this.view.zoom > 4 ? 3 : 2);
    const xs = this.xs, ys = this.ys, cl = this.cluster, colours = this.colours;
    for (let i = 0; i < this.n; i++) {
      const x = (xs[i] * s + ox) | 0, y = (ys[i] * s + oy) | 0;
      if (x < 0 || y < 0 || x > W - dot || y > H - dot) continue;
      const colour = colours[cl[i]];
      let at = y * W + x;
      for (let dy = 0; dy < dot; dy++, at += W) for (let dx = 0; dx < dot; dx++) px[at + dx] = colour;
    }
    this.ctx.putImageData(this.image, 0, 0);
    this.ctx.lineWidth = 2;
    this.ctx.strokeStyle = "#111";
    for (const i of this.selected) this.ring(i, 5);
    if (this.hovered >= 0) { this.ctx.strokeStyle = "#2f6fed"; this.ring(this.hovered, 7); }
    stats.draws.push(performance.now() - started);
  }

  ring(i, r) {
    const [x, y] = this.toScreen(this.xs[i], this.ys[i]);
    this.ctx.beginPath();
    this.ctx.arc(x, y, r, 0, 2 * Math.PI);
    this.ctx.stroke();
  }

  nearest(sx, sy, radiusPx = 6) { // the closest point within radiusPx of a screen position, or -1
    const started = performance.now();
    const [x, y] = this.toData(sx, sy);
    const r = radiusPx / (this.size * this.view.zoom), G = this.G;
    const gx0 = Math.max(0, Math.floor((x - r) * G)), gx1 = Math.min(G - 1, Math.floor((x + r) * G));
    const gy0 = Math.max(0, Math.floor((y - r) * G)), gy1 = Math.min(G - 1, Math.floor((y + r) * G));
    let best = -1, bestD = r * r;
    for (let gy = gy0; gy <= gy1; gy++) {
      for (let gx = gx0; gx <= gx1; gx++) {
        const c = gy * G + gx;
        for (let j = this.cellStart[c]; j < this.cellStart[c + 1]; j++) {
          const i = this.cellItems[j], dx = this.xs[i] - x, dy = this.ys[i] - y, d = dx * dx + dy * dy;
          if (d <= bestD) { bestD = d; best = i; }
        }
      }
    }
    stats.hovers.push(performance.now() - started);
    return best;
  }

  rowsOfListing(listingId) {
    const li = this.data.listing_ids.indexOf(listingId);
    const rows = [];
    if (li >= 0) for (let i = 0; i < this.n; i++) if (this.data.listing[i] === li) rows.push(i);
    return Int32Array.from(rows);
  }
}

let map = null;
let frame = 0;
function redraw() { if (!frame) frame = requestAnimationFrame(() => { frame = 0; map.draw(); }); }

function wireMap(canvas) {
  const hover = $("hover");
  let drag = null, moved = false, pending = null;
  const at = (e) => { const b = canvas.getBoundingClientRect(); return [e.clientX - b.left, e.clientY - b.top]; };
  canvas.addEventListener("mousedown", (e) => { drag = at(e); moved = false; canvas.classList.add("dragging"); });
  window.addEventListener("mouseup", () => { drag = null; canvas.classList.remove("dragging"); });
  canvas.addEventListener("mousemove", (e) => {
    const [sx, sy] = at(e);
    if (drag) {
      const s = map.size * map.view.zoom;
      map.view.cx -= (sx - drag[0]) / s; map.view.cy -= (sy - drag[1]) / s;
      moved = moved || Math.abs(sx - drag[0]) + Math.abs(sy - drag[1]) > 2;
      drag = [sx, sy];
      hover.hidden = true;
      redraw();
      return;
    }
    if (pending === null) requestAnimationFrame(() => { showHover(...pending); pending = null; });
    pending = [sx, sy];
  });
  canvas.addEventListener("mouseleave", () => { hover.hidden = true; map.hovered = -1; redraw(); });
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const [sx, sy] = at(e);
    const [x, y] = map.toData(sx, sy);
    map.view.zoom = Math.min(200, Math.max(0.5, map.view.zoom * Math.exp(-e.deltaY * 0.0015)));
    const [nx, ny] = map.toData(sx, sy); // keep the point under the cursor in place
    map.view.cx += x - nx; map.view.cy += y - ny;
    redraw();
  }, { passive: false });
  canvas.addEventListener("click", (e) => {
    if (moved) return;
    const i = map.nearest(...at(e));
    if (i >= 0) openListing(map.data.listing_ids[map.data.listing[i]], map.data.image_ids[i]);
  });

  function showHover(sx, sy) {
    const i = map.nearest(sx, sy);
    if (i !== map.hovered) { map.hovered = i; redraw(); }
    if (i < 0) { hover.hidden = true; return; }
    const id = map.data.image_ids[i];
    const img = hover.querySelector("img");
    if (img.dataset.imageId !== id) { img.src = thumb(id); img.dataset.imageId = id; }
    hover.querySelector("span").textContent = `cluster ${map.cluster[i]} · ${short(id)}`;
    hover.style.left = `${Math.min(sx + 14, canvas.width - 110)}px`;
    hover.style.top = `${Math.min(sy + 14, canvas.height - 124)}px`;
    hover.hidden = false;
  }
}

// -- panels ----------------------------------------------------------------------------------------
function showTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.setAttribute("aria-selected", String(b.dataset.tab === name));
  for (const t of document.querySelectorAll(".tab")) t.hidden = t.id !== `tab-${name}`;
  if (name === "outliers" && !$("tab-outliers").dataset.loaded) loadScored("catalogue", $("tab-outliers"));
  if (name === "misfits" && !$("tab-misfits").dataset.loaded) loadScored("listing", $("tab-misfits"));
  if (name === "duplicates" && !$("tab-duplicates").dataset.loaded) loadDuplicates();
}

// Each cluster beside its size, shown by its most central images (the medoid first): lazy
// thumbnails, so a run of hundreds of clusters loads only the rows scrolled to.
const CENTRAL = 6;

function clusterRow(c) {
  const strip = el("span", { class: "strip" }, ...c.central.map((id, i) => el("img", {
    src: thumb(id), alt: "", loading: "lazy", decoding: "async", dataset: { imageId: id },
    class: i === 0 ? "medoid" : "" })));
  const open = el("button", {
    type: "button", class: "cluster", title: `cohesion ${c.cohesion.toFixed(3)}`,
    "aria-label": `cluster ${c.cluster_id}: ${c.size} images; open its gallery`, onclick: () => openCluster(c),
  }, el("span", { class: "swatch", style: `background:${cssColour(c.cluster_id)}` }),
     el("span", { class: "name" }, `${c.cluster_id}`),
     el("span", { class: "size" }, `${c.size.toLocaleString()} images`), strip);
  return el("li", { dataset: { clusterId: c.cluster_id } }, open);
}

async function loadClusters() {
  const body = await getJSON(`/v1/analytics/clusters?central=${CENTRAL}`);
  $("cluster-list").replaceChildren(...body.clusters.map(clusterRow));
}

async function openCluster(c, offset = 0) {
  for (const li of $("cluster-list").children) li.classList.toggle("open", Number(li.dataset.clusterId) === c.cluster_id);
  const gallery = $("cluster-gallery");
  const page = await getJSON(`/v1/analytics/clusters/${c.cluster_id}/members?offset=${offset}&limit=48`);
  let grid = gallery.querySelector(".gallery");
  if (offset === 0) {
    grid = el("div", { class: "gallery", dataset: { clusterId: c.cluster_id } });
    gallery.replaceChildren(el("p", { class: "meta" },
      `cluster ${c.cluster_id}: ${c.size} images, cohesion ${c.cohesion.toFixed(3)}; nearest clusters `
      + c.nearest.map((n) => `${n.cluster_id} (${n.similarity.toFixed(2)})`).join(", ")), grid);
  }
  gallery.querySelector(".more")?.remove();
  for (const id of page.members) {
    const medoid = id === c.medoid_image_id;
    grid.append(figure(id, medoid ? "medoid" : short(id), null, medoid ? "medoid" : ""));
  }
  for (const img of grid.querySelectorAll("img:not([data-wired])")) {
    img.dataset.wired = "1";
    img.addEventListener("click", () => openImage(img.dataset.imageId));
  }
  const next = offset + page.members.length;
  if (next < page.size) gallery.append(el("button", { class: "more", onclick: () => openCluster(c, next) }, `more (${page.size - next} left)`));
}

async function loadScored(kind, panel) {
  panel.dataset.loaded = "1";
  const rows = await getJSON(`/v1/analytics/outliers?kind=${kind}&limit=20`);
  const what = kind === "catalogue" ? "nearest images of other listings" : "its listing's other images";
  panel.replaceChildren(el("p", { class: "meta" }, `${rows.length} worst first; beside each, ${what}.`),
    ...rows.map((s) => el("div", { class: "item", dataset: { imageId: s.image_id } },
      el("div", { class: "meta" }, `${s.listing_name || short(s.listing_id)} · score ${s.score.toFixed(3)} · percentile ${s.percentile.toFixed(1)}`),
      el("div", { class: "row" }, figure(s.image_id, short(s.image_id), s.listing_id, "subject"), el("span", { class: "arrow" }, "→"),
        ...s.neighbours.slice(0, 5).map((n) => figure(n.image_id, n.score.toFixed(2), n.listing_id))))));
}

async function loadDuplicates() {
  const panel = $("tab-duplicates");
  panel.dataset.loaded = "1";
  const groups = await getJSON("/v1/analytics/duplicates?limit=30");
  if (!groups.length) { panel.replaceChildren(el("p", { class: "hint" }, "No near-duplicate groups in this run.")); return; }
  panel.replaceChildren(...groups.map((g) => el("div", { class: "item", dataset: { groupId: g.group_id } },
    el("div", { class: "meta" }, `group ${g.group_id} · ${g.cross_listing ? "across listings" : "within one listing"} · ${g.images.length} images`),
    el("div", { class: "group" }, ...g.images.map((i) => figure(i.image_id,
      `${i.listing_name || short(i.listing_id)} · ${stockText(i.inventory)}`, i.listing_id))))));
}

async function openImage(imageId) {
  const a = await getJSON(`/v1/analytics/images/${imageId}`);
  openListing(a.listing_id, imageId);
}

async function openListing(listingId, imageId) {
  showTab("listing");
  const panel = $("tab-listing");
  panel.replaceChildren(el("p", { class: "hint" }, "Loading the listing…"));
  if (map) { map.selected = map.rowsOfListing(listingId); redraw(); }
  try {
    const [listing, scored] = await Promise.all([
      getJSON(`/v1/listings/${listingId}`), getJSON(`/v1/analytics/listings/${listingId}`)]);
    const byId = Object.fromEntries(scored.images.map((i) => [i.image_id, i]));
    panel.replaceChildren(
      el("h2", { id: "listing-name" }, listing.listing_name || short(listingId)),
      el("p", { class: "meta" }, `${stockText(listing.inventory)} · ${listing.images.length} images · misfits marked at percentile ≥ ${scored.min_percentile}`),
      el("div", { class: "group", id: "listing-images" }, ...listing.images.map((im) => {
        const s = byId[im.image_id] || {};
        const label = s.misfit ? `misfit (${s.misfit_percentile.toFixed(1)})`
          : s.misfit_percentile != null ? `fits (${s.misfit_percentile.toFixed(0)})` : "not in the run";
        const f = figure(im.image_id, label, null, s.misfit ? "misfit" : "");
        if (im.image_id === imageId) f.querySelector("img").style.outline = "3px solid #2f6fed";
        f.querySelector("img").addEventListener("click", () => window.open(im.content, "_blank"));
        return f;
      })));
  } catch (err) {
    panel.replaceChildren(el("p", { class: "hint" }, `Error: ${err.message}`));
  }
}

// -- start -----------------------------------------------------------------------------------------
async function start() {
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
  const statusLine = $("run-status");
  try {
    const runs = await getJSON("/v1/analytics/runs");
    const run = runs.runs.find((r) => r.run_id === runs.current_run_id);
    if (!run) throw new Error("no analytics run yet: run `lookalike analyze` first");
    const started = performance.now();
    const data = await getJSON("/v1/analytics/map");
    const loaded = performance.now() - started;
    map = new PointMap($("map"), data);
    wireMap($("map"));
    map.draw();
    statusLine.textContent = `Run ${short(run.run_id)} of ${run.model}: ${run.counts.images} images, `
      + `${run.counts.clusters} clusters, finished ${new Date(run.finished_at).toLocaleString()}.`;
    $("map-count").textContent = `${data.count.toLocaleString()} points, loaded in ${Math.round(loaded)} ms.`;
    document.body.dataset.ready = "1";
    await loadClusters();
  } catch (err) {
    statusLine.textContent = err.message;
    document.body.dataset.ready = "error";
  }
}

window.explore = {
  get map() { return map; },
  // draws `frames` frames while panning and zooming, and `hovers` nearest-point look-ups
  benchmark(frames = 60, hovers = 2000) {
    stats.draws.length = 0; stats.hovers.length = 0;
    const v = { ...map.view };
    for (let f = 0; f < frames; f++) { map.view.cx = 0.5 + 0.1 * Math.sin(f / 7); map.view.zoom = 1 + (f % 10) / 5; map.draw(); }
    Object.assign(map.view, v); map.draw();
    for (let h = 0; h < hovers; h++) map.nearest((h * 37) % map.canvas.width, (h * 53) % map.canvas.height);
    const pct = (a, q) => [...a].sort((x, y) => x - y)[Math.min(a.length - 1, Math.floor(q * a.length))];
    return { points: map.n, draw_ms_median: pct(stats.draws, 0.5), draw_ms_p95: pct(stats.draws, 0.95),
             hover_ms_median: pct(stats.hovers, 0.5), hover_ms_p95: pct(stats.hovers, 0.95) };
  },
};

start();
