"""``python -m detr_nb_utils.training``: see :mod:`.cli`."""
from .cli import main

main()
