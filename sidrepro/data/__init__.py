"""Inputs the workflow fetches or derives before training and evaluation: the image-text dataset (a pinned hub
dataset snapshot of parquet shards), the data-free prompt file made from its captions, and the CLIP metric weights
in a local hub cache for compute nodes without network. Heavy imports stay inside the functions."""

# The dataset of spec §6.4; here (not in dataset.py) so that the command line reads them without importing the hub.
DEFAULT_DATASET = "brivangl/midjourney-v6-llava"
DEFAULT_FILES = "data/train_*.parquet"
CAPTION_COLUMN = "llava"
IMAGE_COLUMN = "image"
