"""The memory inspector: a small aiohttp app to see, correct, export and erase what the companion remembers.

``python -m inspector`` serves it on 127.0.0.1:INSPECTOR_PORT. It reads and changes a user's memory only through the
services the agent uses (``inspector.access`` is the one module that calls them).
"""
