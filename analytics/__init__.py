"""Catalogue analytics: clusters, outliers, listing misfits and near-duplicates."""
