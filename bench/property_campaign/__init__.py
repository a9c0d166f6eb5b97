"""The new-properties campaign behind ``bench/properties.py``, in pieces.

``bench/properties.py`` is the command line; this package does the work, reusing the
energy campaign's package (``bench/transfer_campaign/``: the settings and rows, the
learning-rate search, the ``mtt`` runner with its CPU-time accounting, the locked
CSV, the plot) wherever it fits. Its own modules, each importing only those before
it: ``targets`` (the properties: keys, units, metatrain target sections), ``spec``
(the committed spec and the per-property settings and row tables), ``data`` (the
accuracy campaign's splits, read and checked, never re-made), ``scoring`` (the
reader of ``mtt eval``'s predictions, errors and the cross-check against its log),
``rotation`` (the exported dipole model's error under rotation), ``tables``
(``results.csv``, ``results.md``, one plot per property) and ``running`` (the runs
and the campaign loop).
"""
