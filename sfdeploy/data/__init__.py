"""Data sets for detection training and evaluation: synthetic shapes, COCO JSON, PASCAL VOC and YOLO.

Every reader validates on load (clipping/dropping bad boxes with one counted warning per kind) and
returns torchvision-style samples; ``annotation(i)`` gives boxes without decoding pixels.
"""

from .base import DetectionDataset, ImageAnnotation, collate, read_image, validate_images
from .build import DATA_HELP, build_dataset
from .coco import CocoDataset
from .coco_gt import to_coco_gt
from .errors import DataError, DataWarning
from .synthetic import SyntheticDataset
from .transforms import (Compose, RandomHorizontalFlip, RandomScaleJitter, ResizeShortestEdge, eval_transforms,
                         train_transforms)
from .voc import VocDataset
from .yolo import YoloDataset

__all__ = [
    "DATA_HELP", "CocoDataset", "Compose", "DataError", "DataWarning", "DetectionDataset", "ImageAnnotation",
    "RandomHorizontalFlip", "RandomScaleJitter", "ResizeShortestEdge", "SyntheticDataset", "VocDataset", "YoloDataset",
    "build_dataset", "collate", "eval_transforms", "read_image", "to_coco_gt", "train_transforms",
    "validate_images",
]
