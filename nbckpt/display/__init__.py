"""Text and HTML for people: tables of records, info rows (pure functions, no Jupyter imports).

The command line, the ``%ckpt`` magics, the widgets and ``Archive._repr_html_``
all format through :mod:`nbckpt.display.tables` and :mod:`nbckpt.display.info`.
"""
