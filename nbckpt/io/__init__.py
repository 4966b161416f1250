"""Input and output: where checkpoint bytes come from and go to.

- :mod:`nbckpt.io.sources` — paths, file objects and URLs opened for reading;
  atomic writes (temporary file, fsync, rename) and the clean-up of temporaries
  left by writers that died.
- :mod:`nbckpt.io.remote` — URLs through fsspec: ranged reads, uploads that land
  whole or not at all.
- :mod:`nbckpt.io.ranges` — a byte range of another file as a seekable file of its
  own (an object at a URL; a chunk's region in a DCP data file).

Nothing here knows a checkpoint format; the readers in :mod:`nbckpt.formats`
and the writers in :mod:`nbckpt.format` use these to reach their bytes.
"""
