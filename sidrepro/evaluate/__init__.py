"""Evaluation: the COCO-2014 reference set, generated samples, FID and CLIP score under named protocols."""
