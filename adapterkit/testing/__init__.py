"""Public testing helpers: hypothesis strategies that generate valid adapters of every kind."""
