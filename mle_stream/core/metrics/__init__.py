"""Mergeable metric states: one class per task, each updating from a columnar batch of outcomes."""
