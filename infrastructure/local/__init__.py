"""Runs the pipeline's real components as local processes, with all state under one directory."""
