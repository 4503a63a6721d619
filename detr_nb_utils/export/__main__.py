"""``python -m detr_nb_utils.export``: see :mod:`.cli`."""
import sys

from .cli import main

sys.exit(main())
