"""One module per input format, each exposing ``READER`` (a :class:`neko.data.readers.base.Reader`).

The registry, detection and :func:`neko.data.formats.read_any` live in :mod:`neko.data.formats`;
shared streaming and validation live in :mod:`neko.data.readers.base`.
"""
