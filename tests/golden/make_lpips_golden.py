"""Reference outputs of the real ``lpips`` package (LPIPS v0.1, net='alex') on the seeded random
weights and inputs of lpips_case.py, written to lpips_alex.json. Made ONCE, in an environment
with torchvision and lpips (which this project's own environment cannot import beside its torch):

    python3 -m venv /tmp/lpipsenv
    /tmp/lpipsenv/bin/pip install torch==2.14.1 torchvision==0.29.1 lpips
    /tmp/lpipsenv/bin/python -m tests.golden.make_lpips_golden     # from the repository root

It imports neither gooddrag nor the tests' other modules. tests/test_benchmark.py then checks
gooddrag's own LPIPS(alex) against the stored numbers in every run, without lpips installed.
"""

from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    import lpips
    import torch

    from tests.golden import lpips_case as C

    torch.set_num_threads(1)
    # pretrained=False: no downloaded heads; pnet_rand=True: torchvision's AlexNet without weights
    model = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False).eval()
    alex, lin = C.alex_weights(), C.lin_weights()
    slices = [model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5]
    convs = {}
    for s in slices:
        for name, module in s.named_children():  # lpips keeps torchvision's feature indices as names
            if isinstance(module, torch.nn.Conv2d):
                convs[int(name)] = module
    assert sorted(convs) == sorted(C.ALEX_CONVS), sorted(convs)
    with torch.no_grad():
        for i, conv in convs.items():
            conv.weight.copy_(torch.from_numpy(alex[f"features.{i}.weight"]))
            conv.bias.copy_(torch.from_numpy(alex[f"features.{i}.bias"]))
        for k, head in enumerate(model.lins):
            head.model[1].weight.copy_(torch.from_numpy(lin[f"lin{k}.model.1.weight"]))
        distances = [model(torch.from_numpy(a), torch.from_numpy(b)).flatten().double().tolist()
                     for a, b in C.input_pairs()]
    data = {
        "made_with": {"command": "python -m tests.golden.make_lpips_golden",
                      **{n: metadata.version(n) for n in ("lpips", "torch", "torchvision", "numpy")}},
        "checksums": C.checksums(),
        "distances": distances,
    }
    (HERE / "lpips_alex.json").write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {HERE / 'lpips_alex.json'}: {distances}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
