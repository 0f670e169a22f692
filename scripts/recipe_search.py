"""Recipe search on a GPU: many variants of a graph file's recipe, trained with PyTorch at once.

A research tool for the recipes in graphs/ (README, "Searching recipes on a GPU"), not part of
alexc: PyTorch stays an optional peer. Each run uses alexc's own pieces wherever they exist:
the graph file parsed by alexc (`parse_graph`), alexc's initial parameters (`init_params`),
the held-out validation split (`open_source`), the learning-rate schedule (`Schedule`) and the
torch lowering of `alexc bench` (`TorchProgram`); the update is the paper's SGD rule that
`alexc train` runs (v = m v - lr (wd w + g); w += v). The augmentation (flips, padded random
crops, resizing, PCA jitter) is redone on the GPU with its own random draws, so a run matches
`alexc train` in distribution, not image for image. Two options exist only here, to measure
them before building them: random erasing (`erase`, Zhong et al. 2017) and an exponential
moving average of the weights (`ema`).

    OUT=results python scripts/recipe_search.py PLAN WORKERS

runs PLAN's variants in WORKERS processes sharing one GPU (each takes every WORKERS-th
variant, in order) and appends a JSON line per epoch and per finished run to
$OUT/results.jsonl: validation top-1, test top-1 of the same weights, and test top-1 averaged
with the mirror images. The run's result is the epoch with the best validation top-1, as
`alexc train` chooses best.safetensors. IDX files are read from $ALEXC_SEARCH_DATA (default:
Debian's Fashion-MNIST). START_BY=S starts no variant after S seconds; SEARCH_STEPS=K trains
K steps per epoch (a smoke test).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "runtime")]

from alexc.bench.torch_peer import TorchProgram  # noqa: E402
from alexc.data import FASHION_MNIST_DIR, Augment, open_source  # noqa: E402
from alexc.passes.lower import logits_of  # noqa: E402
from alexc.serial.frontend import parse_graph  # noqa: E402
from alexc.training.loop import adapt_graph  # noqa: E402
from alexc.training.optim import Schedule  # noqa: E402

DATA = Path(os.environ.get("ALEXC_SEARCH_DATA", FASHION_MNIST_DIR))
OUT = Path(os.environ.get("OUT", "search-results"))
START = float(os.environ.get("T0", time.time()))
MINI, PAPER = "graphs/alexnet-mini.yaml", "graphs/alexnet.yaml"
WIDE = {"conv1": 48, "conv2": 96, "conv3": 144, "conv4": 144, "conv5": 192}  # 1.5x filters
NO_DROPOUT = ["drop6", "drop7"]


def variant(id_, graph, seeds=(0,), **edits) -> list[dict]:
    """One variant per seed. edits: train/data (section keys), init (the graph's default),
    nodes ({name: {attr: value}}), remove ([names]), erase (probability), ema (decay)."""
    return [dict(id=f"{id_}-s{s}", graph=graph, seed=s, **edits) for s in seeds]


def _plans() -> dict[str, list[dict]]:
    one = {"epochs": 1}  # the paper net's runs: one epoch each
    mini = [
        *variant("base", MINI, seeds=(0, 1)),
        *variant("pad2-crops", MINI, data={"random_crop": True, "pad": 2}),
        *variant("erase0.5", MINI, erase=0.5),
        *variant("ema0.999", MINI, ema=0.999),
        *variant("lr0.1", MINI, train={"lr": 0.1}),
        *variant("lr0.2", MINI, train={"lr": 0.2}),
        *variant("lr0.1-ls0", MINI, train={"lr": 0.1, "label_smoothing": 0.0}),
        *variant("lr0.1-wd1e-3", MINI, train={"lr": 0.1, "weight_decay": 0.001}),
        *variant("fc2048", MINI, nodes={"fc6": {"units": 2048}, "fc7": {"units": 2048}}),
        *variant("wide", MINI, nodes={k: {"filters": v} for k, v in WIDE.items()}),
    ]
    paper = [
        *variant("base", PAPER, seeds=(0, 1, 2, 3), train=one),
        *variant("no-dropout", PAPER, seeds=(0, 1, 2, 3), train=one, remove=NO_DROPOUT),
        *variant("dropout0.25", PAPER, seeds=(1,), train=one, nodes={
            "drop6": {"rate": 0.25}, "drop7": {"rate": 0.25}}),
        *variant("lr0.02", PAPER, seeds=(0, 1), train={**one, "lr": 0.02}),
        *variant("std0.353", PAPER, train=one, data={"std": [0.353] * 3}),
        *variant("kaiming-std0.353", PAPER, seeds=(0, 1), train=one,
                 init={"weight": {"kaiming_normal": 1.0}}, data={"std": [0.353] * 3}),
    ]  # fmt: skip
    return {"mini": mini, "paper": paper}


def build_graph(cfg: dict):
    """The graph file with the variant's edits, parsed by alexc."""
    doc = yaml.safe_load((ROOT / cfg["graph"]).read_text())
    doc.setdefault("train", {}).update(cfg.get("train", {}))
    doc.setdefault("data", {}).update(cfg.get("data", {}))
    if "init" in cfg:  # a new default, which nodes' own weight inits would override
        doc["init"] = {**doc["init"], **cfg["init"]}
        for node in doc["nodes"]:
            node.get("init", {}).pop("weight", None)
            if node.get("init") == {}:
                del node["init"]
    remove, edits = set(cfg.get("remove", [])), cfg.get("nodes", {})
    doc["nodes"] = [
        {**n, **edits.get(n["name"], {})} for n in doc["nodes"] if n["name"] not in remove
    ]
    return parse_graph(yaml.safe_dump(doc, sort_keys=False), source=cfg["id"])


class GpuData:
    """The train, val and test splits as uint8 images on the GPU (resized once if the graph's
    data section resizes), and the PCA statistics of the training images."""

    def __init__(self, aug: Augment, dev: torch.device):
        sources = {
            s: open_source(DATA, split=s, channels=aug.channels) for s in ("train", "val", "test")
        }
        self.classes = list(sources["train"].classes)
        self.x, self.y = {}, {}
        for split, src in sources.items():
            images = torch.from_numpy(np.ascontiguousarray(src.images[..., 0])).to(dev)
            if aug.resize is not None:
                images = torch.cat([
                    F.interpolate(images[i : i + 2000, None].float(), size=(aug.resize,) * 2,
                                  mode="bilinear", align_corners=False).round().clamp(0, 255)
                    .to(torch.uint8)[:, 0]
                    for i in range(0, len(images), 2000)
                ])  # fmt: skip
            self.x[split] = images
            self.y[split] = torch.from_numpy(src.labels.astype(np.int64)).to(dev)
        self.eigen = None
        if aug.pca_jitter:
            vals, vecs = sources["train"].rgb_eigen()
            self.eigen = tuple(
                torch.tensor(a, dtype=torch.float32, device=dev) for a in (vals, vecs)
            )


def normalise(aug: Augment, crops: torch.Tensor, shift=None) -> torch.Tensor:
    """uint8 (B, H, W) -> float (B, C, H, W): (pixel + shift) / 255 less mean, over std."""
    c, dev = aug.channels, crops.device
    mean = torch.tensor(aug.mean, device=dev).view(1, c, 1, 1)
    std = torch.tensor(aug.std, device=dev).view(1, c, 1, 1)
    x = crops[:, None].float().expand(-1, c, -1, -1)
    if shift is not None:
        x = x + shift[:, :, None, None]
    return (x / 255.0 - mean) / std


def train_batch(aug: Augment, data: GpuData, idx, gen, erase: float) -> torch.Tensor:
    x, n, dev = data.x["train"][idx], len(idx), idx.device
    ch, cw = aug.crop
    if aug.pad:
        x = F.pad(x, (aug.pad,) * 4)
    h, w = x.shape[1:]
    if (h, w) != (ch, cw):
        if aug.random_crop:
            oy = torch.randint(0, h - ch + 1, (n,), device=dev, generator=gen)
            ox = torch.randint(0, w - cw + 1, (n,), device=dev, generator=gen)
        else:
            oy = torch.full((n,), (h - ch) // 2, device=dev)
            ox = torch.full((n,), (w - cw) // 2, device=dev)
        rows = (oy[:, None] + torch.arange(ch, device=dev))[:, :, None]
        cols = (ox[:, None] + torch.arange(cw, device=dev))[:, None, :]
        x = x[torch.arange(n, device=dev)[:, None, None], rows, cols]
    if aug.flip:
        flip = torch.rand(n, device=dev, generator=gen) < 0.5
        x = torch.where(flip[:, None, None], x.flip(-1), x)
    shift = None
    if aug.pca_jitter:
        vals, vecs = data.eigen
        alpha = torch.randn(n, 3, device=dev, generator=gen) * aug.pca_jitter
        shift = 255.0 * (alpha * vals) @ vecs.T
    x = normalise(aug, x, shift)
    if erase:  # with probability `erase`, a box of 2-40% of the image, aspect 0.3-3.3, to 0
        area = torch.empty(n, device=dev).uniform_(0.02, 0.4, generator=gen) * ch * cw
        aspect = (
            torch.empty(n, device=dev).uniform_(math.log(0.3), -math.log(0.3), generator=gen).exp()
        )
        eh = (area * aspect).sqrt().round().clamp(1, ch)
        ew = (area / aspect).sqrt().round().clamp(1, cw)
        ey = (torch.rand(n, device=dev, generator=gen) * (ch - eh + 1)).floor()
        ex = (torch.rand(n, device=dev, generator=gen) * (cw - ew + 1)).floor()
        on = torch.rand(n, device=dev, generator=gen) < erase
        r = torch.arange(ch, device=dev)[None, :, None]
        c = torch.arange(cw, device=dev)[None, None, :]
        box = (r >= ey[:, None, None]) & (r < (ey + eh)[:, None, None])
        box = box & (c >= ex[:, None, None]) & (c < (ex + ew)[:, None, None])
        x = x.masked_fill((box & on[:, None, None])[:, None], 0.0)
    return x


@torch.no_grad()
def top1(aug, program, params, logits, data, split) -> tuple[float, float]:
    """Top-1 of the centre crops, and of their probabilities averaged with the mirrors'."""
    x, y = data.x[split], data.y[split]
    (ch, cw), (h, w) = aug.crop, x.shape[1:]
    x = x[:, (h - ch) // 2 : (h - ch) // 2 + ch, (w - cw) // 2 : (w - cw) // 2 + cw]
    single = mirrored = 0
    for i in range(0, len(x), 1000):
        xb, yb = normalise(aug, x[i : i + 1000]), y[i : i + 1000]
        p = program.values(params, xb)[logits].softmax(1)
        q = program.values(params, xb.flip(-1))[logits].softmax(1)
        single += (p.argmax(1) == yb).sum().item()
        mirrored += ((p + q).argmax(1) == yb).sum().item()
    return single / len(x), mirrored / len(x)


def run(cfg: dict, dev: torch.device, emit, cache: dict) -> None:
    started = time.time()
    graph = build_graph(cfg)
    aug = Augment.from_config(graph.data, graph.input.shape)
    if (aug.channels, aug.resize) not in cache:
        cache.clear()
        cache[aug.channels, aug.resize] = GpuData(aug, dev)
    data = cache[aug.channels, aug.resize]
    graph = adapt_graph(graph, data.classes)
    t = graph.train
    epochs, batch, lr = t["epochs"], t["batch_size"], t["lr"]
    momentum, decay = t.get("momentum", 0.9), t.get("weight_decay", 5e-4)
    schedule = Schedule(t.get("schedule"), lr, epochs=epochs)
    program, logits = TorchProgram(graph), logits_of(graph)
    params = {k: torch.tensor(v, device=dev) for k, v in graph.init_params(cfg["seed"]).items()}
    weights = [w.requires_grad_(True) for w in params.values()]
    velocity = [torch.zeros_like(w) for w in weights]
    average = [w.detach().clone() for w in weights] if cfg.get("ema") else None
    gen = torch.Generator(device=dev)
    gen.manual_seed(1000 + cfg["seed"])
    n = len(data.y["train"])
    steps = n // batch  # the last incomplete batch dropped, as alexc's loader does
    steps = min(steps, int(os.environ.get("SEARCH_STEPS", steps)))  # a smoke test's cap
    best = None
    for epoch in range(epochs):
        epoch_start = time.time()
        order = torch.randperm(n, device=dev, generator=gen)
        loss_sum = torch.zeros((), device=dev)
        for b in range(steps):
            idx = order[b * batch : (b + 1) * batch]
            x = train_batch(aug, data, idx, gen, cfg.get("erase", 0.0))
            out = program.values(params, x, train=True)[logits]
            loss = F.cross_entropy(
                out, data.y["train"][idx], label_smoothing=t.get("label_smoothing", 0.0)
            )
            grads = torch.autograd.grad(loss, weights)
            rate = schedule.lr(epoch, b, steps)
            with torch.no_grad():
                torch._foreach_mul_(velocity, momentum)
                torch._foreach_add_(velocity, weights, alpha=-decay * rate)
                torch._foreach_add_(velocity, grads, alpha=-rate)
                torch._foreach_add_(weights, velocity)
                if average is not None:
                    torch._foreach_lerp_(average, weights, 1 - cfg["ema"])
            loss_sum += loss.detach()
        scored = dict(zip(params, average, strict=True)) if average is not None else params
        val, _ = top1(aug, program, scored, logits, data, "val")
        test, test_mirrored = top1(aug, program, scored, logits, data, "test")
        record = dict(id=cfg["id"], epoch=epoch + 1, loss=round(loss_sum.item() / steps, 4),
                      val=val, test=test, test_mirrored=test_mirrored,
                      seconds=round(time.time() - epoch_start, 1))  # fmt: skip
        emit(record)
        if not math.isfinite(record["loss"]):
            break
        if best is None or val > best["val"]:
            best = record
    emit({**best, "final": True, "seconds": round(time.time() - started, 1), "cfg": cfg})


def worker(plan: str, k: int, workers: int) -> None:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    log = open(OUT / "results.jsonl", "a", buffering=1)  # line-buffered: workers share the file

    def emit(record: dict) -> None:
        log.write(json.dumps(record) + "\n")
        print(json.dumps({k: v for k, v in record.items() if k != "cfg"}), flush=True)

    cache: dict = {}
    for cfg in _plans()[plan][k::workers]:
        if time.time() - START > float(os.environ.get("START_BY", "inf")):
            emit(dict(id=cfg["id"], error="not started: past START_BY"))
            continue
        try:
            run(cfg, dev, emit, cache)
        except Exception as e:  # one broken variant must not stop the others
            emit(dict(id=cfg["id"], error=f"{type(e).__name__}: {e}"))


def main() -> None:
    plan, workers = sys.argv[1], int(sys.argv[2])
    if plan not in _plans():
        sys.exit(f"unknown plan {plan!r}; plans: {', '.join(_plans())}")
    OUT.mkdir(parents=True, exist_ok=True)
    if len(sys.argv) > 3:  # one of the workers
        worker(plan, int(sys.argv[3]), workers)
        return
    env = {**os.environ, "T0": str(START)}
    procs = [
        subprocess.Popen([sys.executable, __file__, plan, str(workers), str(k)], env=env)
        for k in range(workers)
    ]
    sys.exit(max(p.wait() for p in procs))


if __name__ == "__main__":
    main()
