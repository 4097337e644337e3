"""The ``models`` table's rules: what a store's vectors were made by, looked up and recorded once."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.records import ModelInfo
from store.base import Store, StoreError


class UnknownModel(StoreError):
    """The store holds no vectors of the model asked for."""


def stored_model(store: Store, name: str) -> ModelInfo:
    """The model whose vectors the store holds under ``name``."""
    info = store.get_model(name)
    if info is None:
        raise UnknownModel(f"the store holds no vectors of model {name}: run `lookalike extract` first")
    return info


def register_model(store: Store, info: ModelInfo) -> None:
    """Record the model; refuse to mix vectors of other weights under the same name."""
    known = store.get_model(info.name)
    if known is not None and (known.dim, known.dtype, known.weights) != (info.dim, info.dtype, info.weights):
        raise StoreError(
            f"the store holds {info.name} vectors made by {known.weights} ({known.dtype}); this worker "
            f"has {info.weights} ({info.dtype}). Use another store, or re-extract everything."
        )
    store.put_model(info)


@dataclass(frozen=True)
class ModelCoverage:
    """One model of the store and how much of the catalogue it covers."""

    info: ModelInfo
    vectors: int
    images: int

    @property
    def coverage(self) -> float:
        """Vectors per catalogue image (1.0: every image has a vector of this model)."""
        return self.vectors / self.images if self.images else 1.0

    @property
    def complete(self) -> bool:
        return self.vectors >= self.images

    def as_json(self) -> dict[str, object]:
        i = self.info
        return {
            "name": i.name,
            "version": i.version,
            "dim": i.dim,
            "dtype": i.dtype,
            "weights": i.weights,
            "vectors": self.vectors,
            "images": self.images,
            "coverage": round(self.coverage, 6),
        }


def model_coverage(store: Store, info: ModelInfo, images: int | None = None) -> ModelCoverage:
    return ModelCoverage(
        info, store.count_features(info), store.count("images") if images is None else images
    )


def list_models(store: Store) -> list[ModelCoverage]:
    """Every model the store holds, with its vector count and coverage of the catalogue."""
    images = store.count("images")
    return [model_coverage(store, info, images) for info in store.models()]


def check_weights(store: Store, info: ModelInfo) -> None:
    """Refuse (StoreError with the reason) when the store holds ``info.name`` vectors of other
    weights, dimension or dtype: the check :func:`register_model` makes, without writing."""
    known = store.get_model(info.name)
    if known is not None and (known.dim, known.dtype, known.weights) != (info.dim, info.dtype, info.weights):
        raise StoreError(
            f"the store holds {info.name} vectors made by {known.weights} ({known.dim}-d {known.dtype}); "
            f"the configured model has {info.weights} ({info.dim}-d {info.dtype}). Use another store, "
            "or the weights that made the stored vectors."
        )
