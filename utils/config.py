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
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from utils.errors import ConfigError


def option(default: Any, help: str, *, choices: Sequence | None = None, cli: bool = True) -> Any:
    """A dataclass field with command-line metadata (`cli=False` keeps it off the command line)."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "cli": cli}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass
class TrainConfig:
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

    def __post_init__(self) -> None:
        self.validate()

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


def _scalar_parser(tp: Any, optional: bool, name: str):
    base = {int: int, float: float, str: str}.get(tp)
    if base is None:
        raise TypeError(f"config field {name!r}: unsupported type {tp!r}")

    def parse(text: str):
        if optional and text.strip().lower() in ("none", "null", ""):
            return None
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {base.__name__}, got {text!r}") from None

    parse.__name__ = base.__name__
    return parse


def _add_field(group, f: dataclasses.Field, tp: Any, default: Any) -> None:
    flag = "--" + f.name.replace("_", "-")
    meta = f.metadata or {}
    tp, optional = _strip_optional(tp)
    if default is None:
        shown = "none"
    elif isinstance(default, (tuple, list)):
        shown = " ".join(map(str, default))
    else:
        shown = repr(default) if default == "" else default
    help_text = f"{meta.get('help', '')} (default: {shown})".strip().replace("%", "%%")
    kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
    origin = typing.get_origin(tp)
    if tp is bool:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        return
    if origin is Literal:
        kwargs["choices"] = typing.get_args(tp)
        tp = type(typing.get_args(tp)[0])
    if origin in (tuple, list):
        args = typing.get_args(tp)
        elem = args[0] if args else str
        if origin is tuple and args and args[-1] is not Ellipsis:
            kwargs["nargs"] = len(args)
        else:
            kwargs["nargs"] = "+"
        kwargs["type"] = _scalar_parser(elem, False, f.name)
    else:
        kwargs["type"] = _scalar_parser(tp, optional, f.name)
    if meta.get("choices"):
        kwargs["choices"] = meta["choices"]
    kwargs["metavar"] = f.name.upper() if "choices" not in kwargs else None
    if kwargs["metavar"] is None:
        del kwargs["metavar"]
    group.add_argument(flag, **kwargs)


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
    parser = argparse.ArgumentParser(prog=prog, description=description)
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
    value raises ConfigError (from the dataclass's `validate`); unknown options exit via argparse.
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


__all__ = ["TrainConfig", "build_parser", "config_to_dict", "option", "parse_config", "plain_value"]
