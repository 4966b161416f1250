"""Checkpoint formats, one module each, behind one :class:`~nbckpt.formats.base.Reader` interface.

:func:`nbckpt.formats.sniff.open_reader` picks the reader of a file from its
leading bytes (or a folder from its file names).
"""
