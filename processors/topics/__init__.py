"""The topic catalogue (``topics.yaml``) and the tools that make a cluster match it.

* :mod:`processors.topics.catalogue`: load and validate the catalogue
  (:func:`load_catalogue`, :class:`Catalogue`, :class:`TopicSpec`, :class:`AppTopics`);
* :mod:`processors.topics.admin`: ``plan``, ``apply`` and ``check`` against a cluster;
* :mod:`processors.topics.cli`: ``processors topics apply|check|list``.
"""

from __future__ import annotations

from processors.topics.catalogue import (
    AppTopics,
    Catalogue,
    CatalogueError,
    RetryTier,
    TopicKind,
    TopicSpec,
    load_catalogue,
)

__all__ = [
    "AppTopics",
    "Catalogue",
    "CatalogueError",
    "RetryTier",
    "TopicKind",
    "TopicSpec",
    "load_catalogue",
]
