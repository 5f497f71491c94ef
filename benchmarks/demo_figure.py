"""The README's picture: input | GoodDrag | GoodDrag+ | ground truth on the demo's scene
(``gooddrag demo``: make_case(0, 64, "single"), LoRA seed 0), with each result's scores.

    python benchmarks/demo_figure.py --out docs/images/demo-comparison.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw

from gooddrag.outputs import draw_points
from gooddrag.shapes.bench import edit_case, load_shapes_pipeline
from gooddrag.shapes.metrics import case_metrics
from gooddrag.shapes.scenes import make_case

SCALE = 4
LABEL = 16


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help="PNG (the scores go to a .json beside it)")
    args = ap.parse_args(argv)
    pipe = load_shapes_pipeline()
    case = make_case(args.seed, 64, "single")
    side = case.size * SCALE
    up = lambda a: Image.fromarray(a).resize((side, side), Image.NEAREST)  # noqa: E731
    tiles = [("input", draw_points(up(case.image), case.handle_points * SCALE, case.target_points * SCALE,
                                   case.mask.repeat(SCALE, 0).repeat(SCALE, 1)))]
    scores = {}
    for method, name in (("gooddrag", "GoodDrag"), ("gooddrag-plus", "GoodDrag+")):
        image, seconds, result = edit_case(pipe, case, method, seed=args.seed)
        scores[method] = case_metrics(image, case) | {"seconds": seconds}
        tiles.append((name, draw_points(up(image), case.handle_points * SCALE, case.target_points * SCALE,
                                        final_points=result.handle_points * SCALE)))
    tiles.append(("ground truth", up(case.ground_truth)))
    fig = Image.new("RGB", (len(tiles) * (side + 8) - 8, side + LABEL), "white")
    draw = ImageDraw.Draw(fig)
    for i, (name, tile) in enumerate(tiles):
        fig.paste(tile, (i * (side + 8), LABEL))
        draw.text((i * (side + 8) + 2, 2), name, fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.save(args.out)
    args.out.with_suffix(".json").write_text(json.dumps(scores, indent=2))
    print(json.dumps(scores, indent=2))  # a script's report
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
