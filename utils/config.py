"""Training options as dataclasses, turned into command-line options.

A script states its defaults as a dataclass instance and lets every field be overridden:

    @dataclass
    class STMEConfig(TrainConfig):
        '''STMENet options'''
        data_root: str = option("", "dataset folder (holds the txt lists)")
        input_size: int = option(512, "network input side in pixels (multiple of 32)")

    cfg = parse_config(STMEConfig(epochs=100, batch_size=4, lr=6.25e-4), argv, "Train STMENet on ITSDT-15K")

Field `batch_size` becomes `--batch-size`; a bool becomes `--flag / --no-flag`; `X | None` accepts
`none`; `Literal[...]` or `choices=` limits the values; `tuple[float, float]` takes two values. `--help`
lists the options grouped by the class that declares them, with each field's help text and default.
Validation lives in `validate()` (called from `__post_init__`); subclasses extend it and raise ConfigError.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from utils.errors import ConfigError

REQUIRED = ""  # the default of an `option(..., required=True)` string field


def option(default: Any, help: str, *, choices: Sequence | None = None, cli: bool = True,
           aliases: Sequence[str] = (), required: bool = False, size: str | None = None) -> Any:
    """A dataclass field with command-line metadata.

    `cli=False` keeps it off the command line; `aliases`: older spellings of the flag (e.g. "--val-fast"),
    still accepted with a one-line note; `required`: the flag must be given (`--help` says so);
    `size`: "square" (an int side, given as N or NxN) or "hw" (an (H, W) pair, given as N or HxW).
    """
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "cli": cli,
            "aliases": tuple(aliases), "required": required, "size": size}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Config:
    """Base of every script's options: `validate()` runs after construction (and after parsing) and raises
    ConfigError naming the flag; subclasses extend it (calling `super().validate()`)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError on an out-of-range value (nothing to check here)."""

    def require(self, condition: bool, message: str) -> None:
        """ConfigError(`message`) unless `condition`."""
        if not condition:
            raise ConfigError(message)

    def at_least(self, minimum: float, *names: str) -> None:
        """ConfigError unless every field in `names` (None allowed) is >= `minimum`."""
        for name in names:
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise ConfigError(f"{flag_name(name)} must be >= {minimum}, got {value}")

    def multiple_of(self, step: int, *names: str) -> None:
        """ConfigError unless every field in `names` (None allowed) is a positive multiple of `step`."""
        for name in names:
            value = getattr(self, name)
            if value is not None and (value < step or value % step):
                raise ConfigError(f"{flag_name(name)} must be a positive multiple of {step}, got {value}")

    def within(self, low: float, high: float, *names: str) -> None:
        """ConfigError unless every field in `names` lies in [low, high]."""
        for name in names:
            value = getattr(self, name)
            if not low <= value <= high:
                raise ConfigError(f"{flag_name(name)} must lie in [{low}, {high}], got {value}")


def flag_name(field_name: str) -> str:
    """`batch_size` -> `--batch-size`."""
    return "--" + field_name.replace("_", "-")


# ----------------------------------------------------------------------------------------------------
# Options that several scripts share (one name, one help text, one default everywhere)
# ----------------------------------------------------------------------------------------------------


def fast_option(what: str = "inference", aliases: Sequence[str] = ()) -> Any:
    """`--fast auto|on|off`: the inference path of evaluation, validation and prediction."""
    from nets.fast import FAST_MODES

    return option("auto", f"{what} path: the fast one (BN folded, fused convs; same outputs within ~1e-7) "
                  "or the eager model; auto = fast on the CPU, eager elsewhere", choices=FAST_MODES,
                  aliases=aliases)


def bit_depth_option() -> Any:
    """`--bit-depth-rule`: how frames with more than 8 bits reach the models' 8-bit scale."""
    from utils.data.frames import BIT_DEPTH_RULES, DEFAULT_BIT_DEPTH_RULE

    return option(DEFAULT_BIT_DEPTH_RULE, "frames with more than 8 bits (16-bit PNG/TIFF, .mat): refuse "
                  "with a message, shift (drop the low bits), minmax-per-sequence (stretch each "
                  "sequence's range), scale-65535 (x 255/65535); 8-bit frames are never changed",
                  choices=tuple(BIT_DEPTH_RULES))


def coco_backend_option() -> Any:
    """`--coco-backend`: which library computes the COCO numbers (identical stats)."""
    from utils.coco_metrics import COCO_BACKENDS

    return option("faster", "COCO scorer: faster (faster-coco-eval, C++; the same numbers) or pycocotools "
                  "(the reference, slower)", choices=COCO_BACKENDS)


def box_mapping_option() -> Any:
    """`--box-mapping`: how detector boxes are mapped back from the letterboxed input."""
    return option("authors", "boxes back to image pixels: authors (their yolo_correct_boxes arithmetic, "
                  "the published protocol) or exact (the geometric inverse of the letterbox)",
                  choices=("authors", "exact"))


@dataclass
class TrainConfig(Config):
    """Training options (shared by every training script)"""

    out: str = option("runs/train", "run folder: last.pt, best.pt, train_log.csv, plots, TensorBoard logs")
    resume: str = option("", "continue from a checkpoint: a path, or 'auto' for OUT/last.pt "
                         "(a fresh run when absent)")
    epochs: int = option(100, "number of epochs")
    batch_size: int = option(4, "batch size per process (effective batch = batch size x number of GPUs)")
    lr: float = option(1e-2, "base learning rate (kept as is under DDP unless --scale-lr)")
    scale_lr: bool = option(False, "multiply the lr by the number of DDP processes")
    schedule: str = option("warm_cos", "lr schedule, set once per epoch: YOLOX warm-up + cosine, step "
                           "decay, or constant", choices=("warm_cos", "step", "constant"))
    min_lr_ratio: float = option(0.01, "minimum lr as a fraction of --lr")
    warmup_epochs: float | None = option(None, "warm_cos: quadratic warm-up epochs "
                                         "(none = the authors' min(max(0.05 x epochs, 1), 3))")
    warmup_lr_ratio: float = option(0.1, "warm_cos: warm-up starts at this fraction of --lr")
    no_aug_epochs: float | None = option(None, "warm_cos: final epochs held at the minimum lr "
                                         "(none = the authors' min(max(0.05 x epochs, 1), 15))")
    step_size: int = option(10, "step: epochs between lr decays")
    step_gamma: float = option(0.7, "step: lr decay factor")
    optimizer: str = option("sgd", "optimizer", choices=("sgd", "adam"))
    momentum: float = option(0.937, "SGD momentum")
    nesterov: bool = option(True, "Nesterov momentum for SGD")
    betas: tuple[float, float] = option((0.9, 0.999), "Adam betas")
    weight_decay: float = option(5e-4, "weight decay (which parameters get it is the model's recipe)")
    clip_grad: float = option(0.0, "clip the gradient norm to this value (0 = off)")
    ema: bool = option(True, "keep an exponential moving average of the weights; evaluate and save it")
    ema_decay: float = option(0.9999, "EMA decay (ramped as decay x (1 - exp(-updates / tau)))")
    ema_tau: float = option(2000.0, "EMA ramp length in updates")
    amp: bool = option(True, "mixed precision on CUDA (always off on CPU)")
    amp_dtype: str = option("float16", "mixed-precision dtype", choices=("float16", "bfloat16"))
    device: str = option("auto", "auto, cpu, cuda or cuda:N (under torchrun: cuda:LOCAL_RANK)")
    seed: int = option(2023, "random seed (python, numpy, torch, data workers)")
    deterministic: bool = option(False, "deterministic cuDNN / torch algorithms (slower)")
    tf32: bool = option(False, "TensorFloat-32 for float32 convolutions and matmuls on Ampere or newer GPUs: "
                        "faster, about 1e-3 relative error (off: full float32, whatever torch's own default; "
                        "under AMP only the float32 parts are affected)")
    workers: int = option(2, "data-loading worker processes per GPU")
    eval_period: int = option(1, "evaluate every this many epochs (and after the last)")
    save_every_iters: int = option(0, "also write last.pt every this many iterations (0 = per epoch only)")
    max_iters_per_epoch: int = option(0, "cap iterations per epoch for quick runs (0 = no cap)")
    skip_nonfinite: bool = option(False, "skip steps whose loss is NaN/inf (counted in the log) instead "
                                  "of stopping")
    sync_bn: bool = option(False, "SyncBatchNorm across GPUs under DDP (CUDA only)")
    exist_ok: bool = option(False, "allow a fresh run to overwrite checkpoints already in OUT")
    progress: bool = option(True, "show a progress bar")
    tensorboard: bool = option(True, "write TensorBoard scalars to OUT/tb (when tensorboard is installed)")
    plot: bool = option(True, "draw OUT/training_curves.png after every epoch")

    def validate(self) -> None:
        """Raise ConfigError on an out-of-range value."""
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_period": self.eval_period}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        non_negative = {"workers": self.workers, "save_every_iters": self.save_every_iters,
                        "max_iters_per_epoch": self.max_iters_per_epoch, "clip_grad": self.clip_grad,
                        "weight_decay": self.weight_decay, "min_lr_ratio": self.min_lr_ratio}
        for name, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        for name in ("warmup_epochs", "no_aug_epochs"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0 or none, got {value}")


# ----------------------------------------------------------------------------------------------------
# dataclass -> argparse
# ----------------------------------------------------------------------------------------------------


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(args) < len(typing.get_args(tp)):
            return args[0], True
    return tp, False


def _normal(text: str) -> str:
    return str(text).strip().lower().replace("-", "_")


def _scalar_parser(tp: Any, optional: bool, name: str, choices: Sequence | None = None):
    """text -> value of type `tp`; `choices` match regardless of case and of `-` / `_`."""
    base = {int: int, float: float, str: str}.get(tp)
    if base is None:
        raise TypeError(f"config field {name!r}: unsupported type {tp!r}")
    canon = {_normal(c): c for c in choices} if choices else None

    def parse(text: str):
        if optional and text.strip().lower() in ("none", "null", ""):
            return None
        if canon is not None and _normal(text) in canon:
            return canon[_normal(text)]
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {base.__name__}, got {text!r}") from None

    parse.__name__ = base.__name__
    return parse


def name_list(text: str) -> list[str]:
    """A comma-separated option value (`--models a,b`) as its names, blanks dropped."""
    return [n.strip() for n in text.split(",") if n.strip()]


def parse_size(text: str, square: bool = False) -> int | tuple[int, int]:
    """"512" or "512x512" -> 512 (`square`); "256x320" or "256" -> (256, 320) / (256, 256)."""
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected N or HxW with sizes >= 0, got {text!r}")
    if square:
        if values[0] != values[1]:
            raise argparse.ArgumentTypeError(f"this size is square (N or NxN), got {text!r}")
        return values[0]
    return values[0], values[1]


def _needed(default: Any, meta: Mapping) -> bool:
    """A required option whose defaults instance does not already fill it."""
    return bool(meta.get("required")) and (default is None or default == REQUIRED or default == [])


def _shown(default: Any, meta: Mapping) -> str:
    if _needed(default, meta):
        return "required"
    if default is None:
        return "default: none"
    if meta.get("size") == "hw" and isinstance(default, (tuple, list)):
        return f"default: {default[0]}x{default[1]}"
    if isinstance(default, (tuple, list)):
        return "default: " + (" ".join(map(str, default)) if default else "none")
    return f"default: {repr(default) if default == '' else default}"


class _SizeAction(argparse.Action):
    """`--size N`, `--size HxW`, or the deprecated `--size H W` -> one (H, W) value."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) == 2 and all(isinstance(v, tuple) and v[0] == v[1] for v in values):
            print(f"note: {option_string} H W is deprecated; use {option_string} HxW", file=sys.stderr)
            values = [(values[0][0], values[1][0])]
        if len(values) != 1:
            parser.error(f"{option_string} takes N or HxW")
        setattr(namespace, self.dest, values[0])


class _DeprecatedAlias(argparse.Action):
    """An old spelling of a flag: stores into the new one and prints a one-line note."""

    def __init__(self, option_strings, dest, new_flag: str, target: argparse.Action, **kwargs):
        kwargs["nargs"] = 0 if target.nargs == 0 else target.nargs
        super().__init__(option_strings, dest, **kwargs)
        self.new_flag, self.target = new_flag, target

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"note: {option_string} is deprecated; use {self.new_flag}", file=sys.stderr)
        if self.target.nargs == 0:
            self.target(parser, namespace, values, self.new_flag)
        else:
            self.target(parser, namespace, values, option_string)


def _add_field(group, f: dataclasses.Field, tp: Any, default: Any) -> None:
    flag = flag_name(f.name)
    meta = f.metadata or {}
    tp, optional = _strip_optional(tp)
    help_text = f"{meta.get('help', '')} ({_shown(default, meta)})".strip().replace("%", "%%")
    kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
    origin = typing.get_origin(tp)
    choices = meta.get("choices")
    if tp is bool:
        action = group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
    else:
        if _needed(default, meta):
            kwargs["required"] = True
        if meta.get("size"):
            square = meta["size"] == "square"
            kwargs["type"] = lambda text, sq=square, opt=optional: None if opt and text.lower() == "none" \
                else parse_size(text, sq)
            kwargs["metavar"] = "N" if square else "N|HxW"
            if not square:  # the older two-number form `--size H W` still works, with a note
                kwargs["nargs"], kwargs["action"] = "+", _SizeAction
        else:
            if origin is Literal:
                choices = typing.get_args(tp)
                tp = type(choices[0])
            if origin in (tuple, list):
                args = typing.get_args(tp)
                elem = args[0] if args else str
                if origin is tuple and args and args[-1] is not Ellipsis:
                    kwargs["nargs"] = len(args)
                else:  # a list: `--x a b` and `--x a --x b` both give [a, b]
                    kwargs["nargs"], kwargs["action"] = "+", "extend"
                kwargs["type"] = _scalar_parser(elem, False, f.name, choices)
            else:
                kwargs["type"] = _scalar_parser(tp, optional, f.name, choices)
            if choices:
                kwargs["choices"] = tuple(choices)
                kwargs["metavar"] = "{" + ",".join(map(str, choices)) + "}"
            else:
                kwargs["metavar"] = f.name.upper()
        action = group.add_argument(flag, **kwargs)
    for alias in meta.get("aliases") or ():
        group.add_argument(alias, action=_DeprecatedAlias, dest=f.name, default=argparse.SUPPRESS,
                           new_flag=flag, target=action, help=argparse.SUPPRESS,
                           **({"type": action.type} if action.type else {}))


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: an unknown flag is answered with the closest known one."""

    def error(self, message: str):
        match = re.match(r"unrecognized arguments: (.*)", message)
        if match:
            known = [s for a in self._actions for s in a.option_strings if a.help != argparse.SUPPRESS]
            parts = []
            words = match.group(1).split()
            for i, word in enumerate(words):
                if not word.startswith("-"):
                    if i == 0 or not words[i - 1].startswith("-"):  # not the value of an unknown option
                        parts.append(f"unexpected argument {word!r}")
                    continue
                close = difflib.get_close_matches(word.split("=")[0], known, n=1, cutoff=0.6)
                parts.append(f"unknown option {word}" + (f" (did you mean {close[0]}?)" if close else ""))
            message = "; ".join(parts)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _owner(cls: type, name: str) -> type:
    """The class in `cls`'s MRO that declares field `name` last (for grouping `--help`)."""
    for klass in cls.__mro__:
        if name in klass.__dict__.get("__annotations__", {}):
            return klass
    return cls


def build_parser(defaults: Any, description: str | None = None,
                 prog: str | None = None) -> argparse.ArgumentParser:
    """An ArgumentParser with one option per CLI field of the dataclass instance `defaults`."""
    cls = type(defaults)
    hints = typing.get_type_hints(cls)
    parser = ArgumentParser(prog=prog, description=description, allow_abbrev=False,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    groups: dict[type, Any] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass) and klass is not object:
            doc = (klass.__doc__ or klass.__name__).strip().splitlines()[0]
            if doc.startswith(klass.__name__ + "("):  # the dataclass-generated signature
                doc = klass.__name__
            groups[klass] = parser.add_argument_group(doc)
    for f in dataclasses.fields(cls):
        if not f.init or not (f.metadata or {}).get("cli", True):
            continue
        owner = _owner(cls, f.name)
        _add_field(groups.get(owner, parser), f, hints[f.name], getattr(defaults, f.name))
    return parser


def parse_config(cls_or_instance: Any, argv: Sequence[str] | None = None, description: str | None = None,
                 prog: str | None = None) -> Any:
    """Parse `argv` (None = sys.argv[1:]) over the defaults of a dataclass (class or instance).

    Returns a new instance; fields not given on the command line keep their defaults. An invalid
    value raises ConfigError (from the dataclass's `validate`); unknown options exit with code 2 and a
    one-line message naming the closest known option.
    """
    defaults = cls_or_instance() if isinstance(cls_or_instance, type) else cls_or_instance
    if not dataclasses.is_dataclass(defaults):
        raise TypeError(f"parse_config needs a dataclass, got {type(defaults).__name__}")
    parser = build_parser(defaults, description, prog)
    values = vars(parser.parse_args(None if argv is None else list(argv)))
    hints = typing.get_type_hints(type(defaults))
    for name, value in values.items():
        if isinstance(value, list) and typing.get_origin(_strip_optional(hints[name])[0]) is tuple:
            values[name] = tuple(value)
    return dataclasses.replace(defaults, **values)


def plain_value(v: Any) -> Any:
    """JSON-like copy: tuples become lists, unknown objects (paths, ...) strings."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (tuple, list)):
        return [plain_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): plain_value(x) for k, x in v.items()}
    return str(v)


def config_to_dict(cfg: Any) -> dict:
    """Plain dict of a config's fields, for JSON and checkpoints."""
    return {f.name: plain_value(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


__all__ = ["REQUIRED", "ArgumentParser", "Config", "TrainConfig", "build_parser", "config_to_dict",
           "flag_name", "name_list", "option", "parse_config", "parse_size", "plain_value"]
