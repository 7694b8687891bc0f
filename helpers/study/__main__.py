"""The study's command line: train one of the two methods (or the PEFT ablation) outside the notebooks.

    python -m helpers.study train ddpm --preset full          # DDPM inpainting fine-tuning (notebook 03)
    python -m helpers.study train sd --preset full            # SD 1.5 inpainting LoRA (notebook 04)
    python -m helpers.study train peft --preset full [--variant dora_r16 ...]   # the ablation (04, last section)
    accelerate launch -m helpers.study train ddpm --preset full   # the same on several GPUs

Each resumes from its last checkpoint; the notebooks then find the finished run instead of
training again. ``--set`` takes dotted preset overrides (``--set ddpm.max_steps=100``).
"""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence

from helpers.study.config import DEFAULT_PRESET, PRESET_HELP, add_set_argument, load_config, parse_overrides


def train(method: str, cfg, max_steps: int | None, variants: Sequence[str] | None = None):
    """Train ``method`` (ddpm | sd | peft) with the preset ``cfg``; return the run's statistics (peft:
    the ablation's cost table, each variant trained and its test-set predictions written, as notebook
    04 does, so that notebook 05, the demo and the deck find it)."""
    from accelerate import PartialState

    from helpers.study.files import paths
    from helpers.study.models import ddpm, sd, sd_pipeline
    from helpers.study.runtime import get_device

    # first use of Accelerate's state: without a GPU, processes started by `accelerate launch --multi_gpu`
    # (torchrun) join one gloo group on the CPU instead of each training alone
    device = get_device(cfg)
    PartialState(cpu=device.type != "cuda")
    if method == "ddpm":
        P = paths(cfg)
        unet, sched = ddpm.build_inpainting_model(cfg, P)
        on_validate = ddpm.make_validator(cfg, P, unet, sched.alphas_cumprod, device)
        return ddpm.finetune(cfg, P, unet, sched, device, on_validate=on_validate, max_steps=max_steps)
    if method == "peft":
        from helpers.study.models import peft_variants

        return peft_variants.run_ablation(cfg, names=variants or None, max_steps=max_steps)
    return sd.train_lora(cfg, sd_pipeline.load_pipeline(cfg), max_steps=max_steps)


def main(argv: Sequence[str] | None = None):
    from accelerate import PartialState

    ap = argparse.ArgumentParser(prog="python -m helpers.study", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train the DDPM (fine-tuning), the SD LoRA or the PEFT variants; "
                                      "resumes a killed run")
    tr.add_argument("method", choices=["ddpm", "sd", "peft"])
    tr.add_argument("--variant", action="append", default=None, metavar="NAME",
                    help="peft only: a variant of ablation.variants (repeat for several; default: all)")
    tr.add_argument("--preset", default=DEFAULT_PRESET, help=PRESET_HELP)
    add_set_argument(tr)
    tr.add_argument("--max-steps", type=int, default=None, help="stop this call after this many steps (resumable)")
    args = ap.parse_args(argv)
    cfg = load_config(args.preset, parse_overrides(args.overrides))
    if args.variant and args.method != "peft":
        ap.error("--variant is for `train peft` only")
    if args.variant:
        from helpers.study.models.peft_variants import variants

        try:
            variants(cfg, args.variant)
        except KeyError as e:                   # before anything loads: the names the preset has
            ap.error(e.args[0])
    stats = train(args.method, cfg, args.max_steps, args.variant)
    if PartialState().is_main_process:
        if args.method == "peft":
            print(stats.to_string(index=False))
        else:
            print(json.dumps({k: v for k, v in stats.items() if k != "history"}, indent=2, default=str))
    return stats


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
