"""Compare the registered models: size, MACs, CPU speed and metrics, beside the papers' published numbers.

    python compare.py --out runs/compare
    python compare.py --models deeppro,resunet_dtum --speed-size 128 \
        --results "DeepPro (ours)=runs/deeppro_nudt/eval_NUDT-MIRSDT_test_best/results.json" \
        --published ../shared/reference/deeppro --out runs/compare_nudt
    python compare.py --no-speed \
        --results "STMENet (ours)=runs/stmenet_itsdt/eval_ITSDT_test_best/metrics.json" \
        --published ../shared/reference/published/ITSDT

Every registered model (or --models a,b) gets a complexity row (utils/compare.py says what is counted);
--results LABEL=PATH adds measured metrics (a metrics.json of vid_map_coco_*.py or a results.json of
test_deeppro.py); the DeepPro paper's tables are always listed, --published adds the authors' PR files (a
folder such as published/ITSDT) or eval logs (eval_<method>_<dataset>.txt, or a folder of them). Writes
OUT/compare.md, OUT/compare.json, and per dataset OUT/pr_<dataset>.png and OUT/roc_<dataset>.png.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from utils.checkpoint import atomic_write_text
from utils.cli import run_main
from utils.compare import (
    Collection,
    add_published,
    add_published_tables,
    add_results,
    build,
    complexity_row,
    cpu_speed,
    format_markdown,
    load_published_tables,
    model_entries,
    write_figures,
)
from utils.config import Config, fast_option, name_list, option, parse_config
from utils.report import write_json


@dataclass
class CompareConfig(Config):
    """Comparison options"""

    models: str = option("", "comma-separated registered models (empty: all)")
    results: list[str] = option([], "measured results, LABEL=PATH each: a metrics.json (vid_map_coco_*.py) "
                                "or a results.json (test_deeppro.py)")
    published: list[str] = option([], "the authors' PR-file folders (e.g. published/ITSDT) and eval logs "
                                  "(eval_<method>_<dataset>.txt or a folder of them)")
    out: str = option("runs/compare", "output folder")
    speed: bool = option(True, "time every model on the CPU")
    speed_size: tuple[int, int] = option((128, 128), "frame size of the timed runs, N or HxW (rounded up to "
                                         "a size the model accepts)", size="hw")
    speed_runs: int = option(3, "timed forward passes per model (after one warm-up)")
    fast: str = fast_option("timing")

    def validate(self) -> None:
        self.at_least(1, "speed_runs")
        self.require(min(self.speed_size) > 0, f"--speed-size must be positive, got {self.speed_size}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_config(CompareConfig(), argv, __doc__.split("\n\n")[0], "compare.py")
    names = name_list(args.models)
    coll = Collection()
    for label, name, variant in model_entries(names):
        model = build(name, variant)
        speed = cpu_speed(name, model, args.speed_size, args.speed_runs, args.fast) if args.speed else None
        coll.complexity.append(complexity_row(label, name, model, speed))
    tables = load_published_tables()
    add_published_tables(coll, tables)
    for spec in args.results:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            label, path = Path(spec).parent.name or Path(spec).stem, spec
        add_results(coll, label, path)
    for path in args.published:
        add_published(coll, path, tables)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"models": names or "all", "speed": args.speed, "speed_size": list(args.speed_size),
                "speed_runs": args.speed_runs, "fast": args.fast, "results": args.results,
                "published": args.published, "sources": tables["sources"]}
    figures = write_figures(coll, out)
    table = format_markdown(coll, settings)
    record = {"settings": settings, "complexity": coll.complexity, "detection": coll.detection,
              "segmentation": coll.segmentation, "figures": figures}
    write_json(out / "compare.json", record)
    atomic_write_text(table, out / "compare.md")
    print(table)
    print(f"wrote {out / 'compare.md'}, {out / 'compare.json'}" + "".join(f", {f}" for f in figures.values()))
    return record


if __name__ == "__main__":
    run_main(main)
