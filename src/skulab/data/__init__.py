"""Datasets: the synthetic default and the internal COCO layout every later stage reads."""
