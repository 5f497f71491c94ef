"""Parity run: FastDrag's latent warp, the authors' function against ours, bit for bit.

Imports ``drag_stretch_multipoint_ratio_interp`` from the authors' ``utils/continuous_drag.py``
(XuanjiaZ/FastDrag, snapshot def3c4e, checked out by the user; nothing of it is copied here: it is
loaded from ``--reference-repo`` at run time; it needs only torch, numpy and tqdm) and our
:func:`gooddrag.core.fastdrag_warp.drag_warp`, and gives both the same inputs, as their ``run_drag``
(utils/ui_utils.py:326-342, :438-442) prepares them: a 0/1 supervision-grid mask resized bilinearly to
the latent (their torchvision 0.15 ``Fu.resize`` of a tensor: no antialiasing; shimmed as our
:func:`~gooddrag.core.fastdrag_warp.latent_mask`, ``F.interpolate`` bilinear, corners not aligned), and
rounded float32 (row, col) handles and targets in supervision cells (factor 4 to the latent).

Cases (seeded): random latents (fp32 and fp16), random unions of rectangles as masks, 1 to 5 pairs,
handles and targets near and beyond the edges (clamping), long drags (many cells landing on one place:
the first-writer rule), and handles on a latent cell's centre inside the mask (their NaN quirk: the
cell is dropped; and where that cell is the mask's first, their code crashes and ours refuses). Every
fill mode is run (``random`` with the same seed on both sides). A case passes when the two latents are
bitwise equal (``torch.equal``; NaN nowhere), or both refuse.

    python research/parity_fastdrag.py --reference-repo /tmp/FastDrag --cases 60 --json fastdrag_warp.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import logging
import sys
import time
from pathlib import Path

import torch

from gooddrag.core.fastdrag_warp import FILLS, drag_warp, latent_mask
from gooddrag.errors import InputsCannotWorkError

logger = logging.getLogger("parity_fastdrag")


def load_reference(repo: Path):
    """Their warp function, loaded from the file (not their ``utils`` package, whose other modules need
    diffusers 0.24)."""
    spec = importlib.util.spec_from_file_location("fastdrag_continuous_drag", repo / "utils" / "continuous_drag.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.drag_stretch_multipoint_ratio_interp


def random_mask(g: torch.Generator, sup: int) -> torch.Tensor:
    """(1, 1, sup, sup) 0/1 float: one to three rectangles."""
    mask = torch.zeros(1, 1, sup, sup)
    for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
        r0, c0 = (int(v) for v in torch.randint(0, sup - 8, (2,), generator=g))
        hh, ww = (int(v) for v in torch.randint(8, sup // 2, (2,), generator=g))
        mask[..., r0:r0 + hh, c0:c0 + ww] = 1
    return mask


def random_pairs(g: torch.Generator, mask: torch.Tensor, kind: str) -> tuple[list, list]:
    """Rounded float32 (row, col) supervision cells (4 per latent cell of the (1, 1, h, w) latent
    ``mask``): handles in masked latent cells, targets per ``kind``."""
    cells = torch.nonzero(mask[0, 0] > 0)
    sup = mask.shape[-1] * 4
    n = int(torch.randint(1, 6, (1,), generator=g)) if kind != "one" else 1
    handles, targets = [], []
    for _ in range(n):
        h = cells[int(torch.randint(0, len(cells), (1,), generator=g))].float() * 4
        if kind != "on-centre":  # on-centre: exactly a latent cell (their NaN quirk)
            h = h + torch.randint(0, 4, (2,), generator=g).float()
            h = h + torch.tensor([1.0, 1.0]) * (h % 4 == 0).all()  # keep off the quirk
        if kind == "edge":
            t = torch.randint(-20, sup + 20, (2,), generator=g).float()
        else:
            t = h + torch.randint(-24, 25, (2,), generator=g).float()
        handles.append(torch.round(h))
        targets.append(torch.round(t))
    return handles, targets


def run_case(reference, seed: int, kind: str, fill: str, dtype: torch.dtype, sup: int) -> dict:
    """One case on both sides: ``equal`` (bitwise), ``both_refused`` or a failure."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(1, 4, sup // 4, sup // 4, generator=g).to(dtype)
    mask = latent_mask(random_mask(g, sup), (sup // 4, sup // 4))
    handles, targets = random_pairs(g, mask, kind)
    record = {"seed": seed, "kind": kind, "fill": fill, "dtype": str(dtype), "pairs": len(handles)}
    torch.manual_seed(seed)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            theirs = reference(z.clone(), handles, targets, mask, fill_mode=fill)
    except Exception as error:  # their crash on the first cell (UnboundLocalError)
        theirs = error
    try:
        ours = drag_warp(z.clone(), torch.stack(handles), torch.stack(targets), mask, fill=fill,
                         generator=torch.Generator().manual_seed(seed))
    except InputsCannotWorkError as error:
        ours = error
    if isinstance(theirs, Exception) or isinstance(ours, Exception):
        record["result"] = "both_refused" if isinstance(theirs, Exception) and isinstance(ours, Exception) else (
            f"MISMATCH theirs={type(theirs).__name__} ours={type(ours).__name__}")
        return record
    record["result"] = "equal" if torch.equal(theirs, ours) else "MISMATCH"
    # cells whose move is not finite (their NaN quirk: dropped) and cells dropped as taken
    on_cell = [h / 4 for h in handles if bool((h % 4 == 0).all()) and mask[0, 0, int(h[0] / 4), int(h[1] / 4)] > 0]
    record["quirk_cells"] = len(on_cell)
    record["changed_cells"] = int((ours != z).any(dim=1).sum())
    record["max_abs_diff"] = float((theirs.float() - ours.float()).abs().max())
    return record


def first_cell_crash(reference) -> dict:
    """A handle exactly on the mask's first cell: their code raises, ours refuses."""
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:10, 4:10] = 1
    handles, targets = [torch.tensor([16.0, 16.0])], [torch.tensor([20.0, 24.0])]
    out = {}
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            reference(z.clone(), handles, targets, mask)
        out["theirs"] = "ran"
    except Exception as error:
        out["theirs"] = type(error).__name__
    try:
        drag_warp(z, torch.stack(handles), torch.stack(targets), mask)
        out["ours"] = "ran"
    except InputsCannotWorkError:
        out["ours"] = "InputsCannotWorkError"
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-repo", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=60, help="cases per (kind, fill); the grid is 128 sup cells")
    parser.add_argument("--sup", type=int, default=128, help="supervision grid side (latent = sup / 4)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    reference = load_reference(args.reference_repo)
    records, start = [], time.perf_counter()
    kinds = ("one", "several", "edge", "on-centre")
    for i in range(args.cases):
        kind, fill = kinds[i % len(kinds)], FILLS[(i // len(kinds)) % len(FILLS)]
        dtype = torch.float16 if i % 3 == 2 else torch.float32
        records.append(run_case(reference, 1000 + i, kind, fill, dtype, args.sup))
    crash = first_cell_crash(reference)
    failures = [r for r in records if r["result"] not in ("equal", "both_refused")]
    summary = {"cases": len(records), "equal": sum(r["result"] == "equal" for r in records),
               "both_refused": sum(r["result"] == "both_refused" for r in records), "failures": failures,
               "cases_with_quirk": sum(r.get("quirk_cells", 0) > 0 for r in records),
               "fp16_cases": sum(r["dtype"] == "torch.float16" for r in records),
               "several_pairs": sum(r["pairs"] > 1 for r in records),
               "first_cell_crash": crash, "seconds": round(time.perf_counter() - start, 1)}
    logger.info("%s", json.dumps({k: v for k, v in summary.items() if k != "failures"}))
    for failure in failures:
        logger.info("FAILED %s", failure)
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "records": records}, indent=1))
    return 0 if not failures and crash["ours"] == "InputsCannotWorkError" else 1


if __name__ == "__main__":
    sys.exit(main())
