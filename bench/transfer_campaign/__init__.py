"""The PBE0 transfer campaign behind ``bench/learning_curve.py``, in pieces.

``bench/learning_curve.py`` is the command line (its options and ``main``); this
package does the work. Planning: ``settings`` (the settings, the pretrained
checkpoint, the rows compared), ``splits`` (splits, ``splits.json``, the split files,
``Campaign``) and ``planning`` (which runs to do, their learning rates and epochs).
Running: ``running`` (one run: ``mtt train``/``mtt eval`` subprocesses, scoring,
zero-shot) and ``campaign`` (``run_campaign``: waves of runs). Tabulating:
``tables`` (``results.csv``, ``results.md``, ``results.png``). Each module imports
only those before it in the order settings, splits, tables, planning, running,
campaign (``planning`` reads selected learning rates back from ``results.csv``).
``bench/properties.py`` (``bench/property_campaign/``) reuses these pieces for its
property targets: the settings take a row table and the columns a learning-rate
search minimises; the spec sections, the ``mtt`` runner, ``train``,
``run_in_parallel``, the CSV writer and the plot are shared.
"""
