"""The data: COCO detection datasets and their transforms, the seeded mini-COCO split, the COCO categories, the
offline demo's synthetic stand-ins, atomic file writes and the checksummed downloads. Imports from
:mod:`detr_nb_utils.models` only."""
