// Lookalike web page, first screen: the catalogue, one page of listings at a time
// (GET /v1/listings: keyset paging, so the page remembers the cursor of each page it has shown),
// each a photo to click, or to reach with Tab and press Enter: a search with that photo (app.js).
"use strict";
const PAGE_SIZE = 24;
const THUMB_SIZE = 320;  // the results' main photos use it too: one thumbnail cached for both
const catalogue = { cursors: [null], at: 0, shown: 0, focusAfter: null };

function tile(listing) {
  const name = listing.listing_name || listing.listing_id.slice(0, 8);
  const first = listing.images[0];
  const photo = document.createElement("button");
  photo.type = "button";
  photo.className = "photo";
  const img = document.createElement("img");
  img.alt = "";  // the button's label says what it is
  img.loading = "lazy";
  img.decoding = "async";
  if (first) {
    img.src = `${first.thumbnail}?size=${THUMB_SIZE}`;
    img.addEventListener("error", () => { img.src = NO_PREVIEW; }, { once: true });
    photo.dataset.imageId = first.image_id;
    photo.title = "See the listings that look like this";
    photo.setAttribute("aria-label", `${name}: search with this photo`);
    photo.addEventListener("click", () => {
      catalogue.focusAfter = listing.listing_id;
      searchImage(first.image_id, listing.listing_id);
    });
  } else {
    img.src = NO_PREVIEW;
    photo.disabled = true;
    photo.setAttribute("aria-label", `${name}: no photos`);
  }
  photo.append(img);
  const title = document.createElement("h3");
  title.textContent = name;
  title.title = name;
  const count = document.createElement("span");
  count.className = "count";
  count.textContent = `${listing.image_count} photo${listing.image_count === 1 ? "" : "s"}`;
  const info = document.createElement("div");
  info.className = "info";
  info.append(title, badge(listing.inventory), count);
  const item = document.createElement("li");
  item.className = "tile";
  item.dataset.listingId = listing.listing_id;
  item.append(photo, info);
  return item;
}

function renderCatalogue(listings) {
  const first = catalogue.at * PAGE_SIZE + 1;
  const where = $("catalogue-where");
  if (!listings.length) {
    where.textContent = catalogue.at ? "No more listings." : "The catalogue is empty: ingest some images first.";
  } else {
    where.textContent = `Page ${catalogue.at + 1}: listings ${first}–${first + listings.length - 1}`;
  }
  $("grid").replaceChildren(...listings.map(tile));
  $("prev").disabled = catalogue.at === 0;
  $("next").disabled = catalogue.cursors.length <= catalogue.at + 1;
}

async function loadCataloguePage(at) {
  const grid = $("grid");
  const mine = ++catalogue.shown;  // a later request wins
  grid.setAttribute("aria-busy", "true");
  const query = new URLSearchParams({ limit: PAGE_SIZE, images: 1 });
  if (catalogue.cursors[at]) query.set("after", catalogue.cursors[at]);
  try {
    const response = await fetch(`/v1/listings?${query}`, withKey({}));
    const body = await response.json().catch(() => ({ detail: response.statusText }));
    if (!response.ok) throw new Error(`${response.status}: ${detail(body)}`);
    if (mine !== catalogue.shown) return;
    catalogue.at = at;
    catalogue.cursors.length = at + 1;
    if (body.next_after) catalogue.cursors.push(body.next_after);
    renderCatalogue(body.listings);
  } catch (error) {
    if (mine === catalogue.shown) $("catalogue-where").textContent = `The catalogue could not be read (${error.message}).`;
  } finally {
    if (mine === catalogue.shown) grid.setAttribute("aria-busy", "false");
  }
}

async function turnPage(step, button) {
  await loadCataloguePage(catalogue.at + step);
  $("catalogue-title").scrollIntoView({ block: "nearest" });
  (button.disabled ? $(button.id === "next" ? "prev" : "next") : button).focus();
}

// Back from a search: the same page, read again (stock moves), and the clicked photo focused.
async function backToCatalogue() {
  await loadCataloguePage(catalogue.at);
  const clicked = catalogue.focusAfter && $("grid").querySelector(`[data-listing-id="${catalogue.focusAfter}"] .photo`);
  if (clicked) clicked.focus();
}

$("prev").addEventListener("click", () => turnPage(-1, $("prev")));
$("next").addEventListener("click", () => turnPage(1, $("next")));
window.addEventListener("lookalike:catalogue", backToCatalogue);
loadCataloguePage(0);
