"""Reading correction data: one reader per public format (``readers/``), format detection and
conversion to neko JSONL (``formats.py``). The row itself is :mod:`neko.schema`."""
