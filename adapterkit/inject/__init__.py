"""Attaching adapters to torch / transformers models."""
