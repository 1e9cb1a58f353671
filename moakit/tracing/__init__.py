"""Spans, their SQLite store, and replay. Nothing here renders anything."""
