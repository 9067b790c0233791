"""File names of the dataset layouts (shared by the synthetic writer, the loaders and the scripts)."""

from __future__ import annotations

COCO_STYLES = ("itsdt", "irdst", "daub")
_LIST_TAGS = {"itsdt": "ITSDT", "irdst": "IRDST", "daub": "DAUB"}


def coco_json_name(split: str) -> str:
    """COCO json of a split at the dataset root: `instances_{train,val,test}2017.json`."""
    return f"instances_{split}2017.json"


def coco_list_name(style: str, split: str) -> str:
    """The authors' txt list of a split: `coco_train_ITSDT.txt` etc."""
    return f"coco_{split}_{_LIST_TAGS.get(style.lower(), style.upper())}.txt"


def nudt_split_name(split: str) -> str:
    """NUDT-MIRSDT split file at the dataset root: `train.txt`, `val.txt` or `test.txt`."""
    return f"{split}.txt"
