"""Procedural toy vision-language world."""
