"""Helpers for the detr-mini-coco notebooks: the published DETR-R50, its matcher and set loss, data, engine."""

__version__ = "0.1.0"
