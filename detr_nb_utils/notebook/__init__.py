"""What the notebooks need beyond the analysis: the setup cell, the figures and :func:`~.figures.save_fig`, the
tables and :func:`~.tables.save_table`. The top of the import graph."""
