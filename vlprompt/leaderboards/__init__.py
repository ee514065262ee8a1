"""Leaderboards: build the Markdown/CSV tables, render the HTML pages, push to W&B."""
