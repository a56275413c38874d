"""Core: settings, validation and errors. Imports nothing else of Companion."""
