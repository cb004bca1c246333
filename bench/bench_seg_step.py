"""Where a segmentation training step spends its time on this CPU, and the cheap wins.

The paper's AttentionUNet (channels 16-32-64-128-128-256) at 128 px, batch 16, DiceCE loss, AdamW.
One step is split into: data (batch gather + augmentation + Algorithm 1 mixing), forward, loss,
backward, optimizer. Then the same step is timed side by side (interleaved repeats, median) with:

- ``baseline``: fp32, contiguous (NCHW) tensors;
- ``channels_last``: fp32, network and inputs in NHWC, which oneDNN's convolutions may prefer;
- ``bf16``: the forward pass under bf16 autocast (``SegConfig(precision="bf16")``), NCHW;
- ``bf16+channels_last``: both;

and the data part with the per-sample MONAI ``deepstack`` augmentation measured against the step.

    python bench/bench_seg_step.py [--size 128] [--batch 16] [--repeats 5]
    python bench/bench_seg_step.py --network res_unet --channels 16,32,64,128,256 --repeats 3 --tag avx2

bf16 is fast only where the CPU computes it natively (AVX512-BF16 or AMX); elsewhere torch emulates it.
The JSON records which (``native_bf16``, torch's ``cpu_capability``) and what ``precision: auto`` (every
preset's) picks on this CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--network", default="attention_unet")
    ap.add_argument("--channels", default=None, help="widths, e.g. 8,16,32,64,64,128 (default: the paper's)")
    ap.add_argument("--tag", default="", help="suffix of the results' name (e.g. the CPU: avx2)")
    args = ap.parse_args()
    from monai.losses import DiceCELoss

    from diffboost.segmentation.augment import BatchAugmenter
    from diffboost.segmentation.networks import build_network
    from diffboost.segmentation.config import SegConfig
    from diffboost.segmentation.patchmix import choose_variants, mix, patch_mask
    from diffboost.utils.environment import native_bf16

    torch.manual_seed(0)
    b, s = args.batch, args.size
    pool_real = torch.rand(200, 1, s, s) * 2 - 1
    pool_syn = torch.rand(400, 1, s, s) * 2 - 1
    pool_mask = (torch.rand(200, 1, s, s) > 0.7).long()
    loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True)
    augment = BatchAugmenter("deepstack", seed=0)

    channels = tuple(int(c) for c in args.channels.split(",")) if args.channels else None

    def make(variant):
        torch.manual_seed(0)
        net = build_network(args.network, 2, channels)
        if "channels_last" in variant:
            net = net.to(memory_format=torch.channels_last)
        return net, torch.optim.AdamW(net.parameters(), lr=1e-3)

    nets = {k: make(k) for k in ("baseline", "channels_last", "bf16", "bf16+channels_last")}
    g = torch.Generator().manual_seed(0)

    def data(step, aug: bool):
        idx = torch.randint(0, 200, (b,), generator=g)
        x, y = pool_real[idx], pool_mask[idx]
        syn = pool_syn[idx * 2 + choose_variants(torch.full((b,), 2), g)]
        if aug:
            both, y = augment(torch.cat([x, syn], 1), y, 0, step)
            x, syn = both[:, :1], both[:, 1:]
        return mix(x, syn, patch_mask(b, s, s, 0.6, max(1, s // 6), g)), y

    def step(variant, x, y):
        net, opt = nets[variant]
        fmt = torch.channels_last if "channels_last" in variant else torch.contiguous_format
        t = [time.perf_counter()]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in variant):
            out = net(x.contiguous(memory_format=fmt)).float()
        t.append(time.perf_counter())
        loss = loss_fn(out, y)
        t.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t.append(time.perf_counter())
        opt.step()
        t.append(time.perf_counter())
        return [t[i + 1] - t[i] for i in range(4)]

    # warm-up
    x, y = data(0, False)
    for k in nets:
        step(k, x, y)
    parts = {k: [] for k in nets}
    data_plain, data_aug = [], []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        x, y = data(r, False)
        data_plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        data(r, True)
        data_aug.append(time.perf_counter() - t0)
        order = list(nets) if r % 2 == 0 else list(nets)[::-1]  # interleaved, alternating order
        for k in order:
            parts[k].append(step(k, x, y))
    rows = []
    med = {}
    for k, reps in parts.items():
        cols = [statistics.median(p[i] for p in reps) for i in range(4)]
        total = sum(cols)
        med[k] = total
        rows.append({"variant": k, "forward_s": cols[0], "loss_s": cols[1], "backward_s": cols[2],
                     "optimizer_s": cols[3], "step_s": total})
    d_plain, d_aug = statistics.median(data_plain), statistics.median(data_aug)
    rows.append({"variant": "data: gather + Algorithm 1 mix", "forward_s": 0.0, "loss_s": 0.0, "backward_s": 0.0,
                 "optimizer_s": 0.0, "step_s": d_plain})
    rows.append({"variant": "data: + deepstack augmentation", "forward_s": 0.0, "loss_s": 0.0, "backward_s": 0.0,
                 "optimizer_s": 0.0, "step_s": d_aug})
    extra = {"size": s, "batch": b, "network": args.network, "channels": channels or "paper", "repeats": args.repeats,
             **{f"speedup_{k}": med["baseline"] / med[k] for k in med if k != "baseline"},
             "data_share_of_step_with_deepstack": d_aug / (d_aug + med["baseline"]),
             "threads": torch.get_num_threads(), "native_bf16": native_bf16("cpu"),
             "cpu_capability": torch.backends.cpu.get_cpu_capability(),
             "auto_precision": SegConfig(precision="auto", device="cpu").training_precision()}
    # data off the critical path: whole epochs with deepstack, next batch made in a thread or not
    from monai.losses import DiceCELoss as _L

    from diffboost.segmentation.data import FoldData
    from diffboost.segmentation.trainer import _train_epoch

    cfg = SegConfig(channels=channels, batch_size=b, epochs=1, aug="deepstack")
    fd = FoldData(pool_real[:96], pool_mask[:96], list(range(96)))
    epoch_t = {False: [], True: []}
    for r in range(max(2, args.repeats // 2)):
        for prefetch in ((False, True) if r % 2 == 0 else (True, False)):  # ABBA: no order bias
            net, opt = make("baseline")
            t0 = time.perf_counter()
            _train_epoch(net, opt, _L(include_background=False, to_onehot_y=True, softmax=True), fd, cfg,
                         augment, max(1, s // 6), epoch=r, prefetch=prefetch)
            epoch_t[prefetch].append(time.perf_counter() - t0)
    e_off, e_on = statistics.median(epoch_t[False]), statistics.median(epoch_t[True])
    rows.append({"variant": "epoch of 96 images, deepstack, inline data", "forward_s": 0.0, "loss_s": 0.0,
                 "backward_s": 0.0, "optimizer_s": 0.0, "step_s": e_off})
    rows.append({"variant": "epoch of 96 images, deepstack, prefetched data", "forward_s": 0.0, "loss_s": 0.0,
                 "backward_s": 0.0, "optimizer_s": 0.0, "step_s": e_on})
    extra["speedup_prefetch_epoch"] = e_off / e_on
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in extra.items()})
    report(f"seg_step_{args.network}_{s}" + ("_narrow" if channels else "") + (f"_{args.tag}" if args.tag else ""), rows, extra)


if __name__ == "__main__":
    main()
