"""Datasets: STMENet clips over the authors' txt lists / COCO json, NUDT-MIRSDT clips and sequences.

    from utils.data import CocoClipDataset, clip_collate, CocoEvalClips, NUDTTrainDataset, NUDTTestSequences

Both training datasets expose `epoch_view(epoch, seed)`: the Dataset of one epoch (the authors' per-epoch
sampling), to wrap in a plain DataLoader.
"""

from utils.data.coco_clips import (
    CocoClipDataset,
    CocoEvalClips,
    ListEntry,
    clip_collate,
    eval_collate,
    letterbox_boxes,
    read_txt_list,
    remap_path,
)
from utils.data.frames import (
    BIT_DEPTH_RULES,
    IMAGE_EXTS,
    FrameIndex,
    LRUCache,
    frame_number,
    letterbox_rgb,
    read_frame,
    read_grey,
    read_mask,
)
from utils.data.naming import coco_json_name, coco_list_name, nudt_split_name
from utils.data.nudt import (
    NUDT_MEAN,
    NUDT_STD,
    NUDTSequence,
    NUDTTestSequences,
    NUDTTrainDataset,
    iter_nudt_sequences,
    mask_centroids,
    normalise_nudt,
    nudt_collate,
    read_split,
)

__all__ = [
    "CocoClipDataset", "CocoEvalClips", "ListEntry", "clip_collate", "eval_collate", "letterbox_boxes",
    "read_txt_list", "remap_path", "IMAGE_EXTS", "FrameIndex", "LRUCache", "frame_number", "letterbox_rgb",
    "read_grey", "coco_json_name", "coco_list_name", "nudt_split_name", "NUDT_MEAN", "NUDT_STD",
    "NUDTSequence", "NUDTTestSequences", "NUDTTrainDataset", "iter_nudt_sequences", "mask_centroids",
    "nudt_collate", "read_split", "BIT_DEPTH_RULES", "read_frame", "read_mask", "normalise_nudt",
]
