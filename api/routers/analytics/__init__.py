"""Catalogue analytics, read back: runs, clusters (paged members), outliers and listing misfits,
near-duplicate groups, one image's or one listing's analysis, and the 2-D map.

Every endpoint reads the served run of the index's model unless ``run`` names a complete run.
Shapes are those of the command line's ``--json`` (``lookalike clusters|outliers|duplicates``),
with a few more fields (cohesion, listing names, live stock). An image stored after the run is
scored on the fly against it (``"fresh": true``).

``routes`` holds the router and its endpoints, ``responses`` the response models (the OpenAPI
contract) and their making from records, ``map_body`` the 2-D map's body and its per-app cache.
"""

from api.routers.analytics.routes import router

__all__ = ["router"]
