# %% [markdown]
# # What is in the store
# Run after `make demo` (it reads `data/lookalike.db`, or `LOOKALIKE_STORE`).

# %%
from collections import Counter

import numpy as np

from config.settings import Settings
from lookalike import stack
from schemas.records import as_uuid
from search.loader import load_index
from search.scoring import ScoreOptions

settings = Settings.from_env()
store = stack.configured_store(settings)
for table in ("features", "images", "listings", "stock_level", "query_results", "models"):
    print(f"{table:14} {store.count(table):8d} rows")

# %% [markdown]
# ## Vectors per listing, and the score spread of a query

# %%
info = store.get_model(stack.model_name(settings))
assert info is not None, "run `make demo` first"
index = load_index(store, info, settings.search)
rows = [index.image_vector(as_uuid(i)) for i in index.image_id_array()]
per_listing = Counter(listing for listing, _ in rows)
print("images per listing:", sorted(Counter(per_listing.values()).items()))
query = rows[0][1]
answer = index.search(query, ScoreOptions(k=index.listing_count))
scores = np.array([r.score for r in answer])
print(
    f"scores of all {len(scores)} listings for image 0: max {scores.max():.3f}, "
    f"median {np.median(scores):.3f}, min {scores.min():.3f}"
)
names = store.listing_names([r.listing_id for r in answer])
for r in answer[:5]:
    print(f"{r.score:.3f}  {names.get(r.listing_id, '')}")
