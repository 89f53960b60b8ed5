"""Compressed runs on disk: run folders, manifests and what they hold."""
