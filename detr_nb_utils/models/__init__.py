"""DETR itself, file by file comparable with the published ``models/``: the model (:mod:`.detr`), its backbone,
transformer and positional encoding, the Hungarian matcher and the set loss, the post-processing, the box formats,
loading the official checkpoint (:mod:`.checkpoint`), and the speed-only fast mode (:mod:`.fast`). Imports nothing
from the rest of the package."""
