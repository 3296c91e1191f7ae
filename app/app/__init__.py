"""AI R&D assistant backend: projects, documents, semantic search and answers."""

__version__ = "1.0.0"
