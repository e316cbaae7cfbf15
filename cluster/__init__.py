"""Filled in by the serving issues; kept so the layout matches DESIGN.md."""
