"""The benchmark harness runs on the CPU with tiny configs and writes a JSON with every workload."""
import json

import pytest
import torch

import helpers as H
from helpers import bench as B


def test_peak_and_flop_counting():
    peak, desc = B.peak_matmul_tflops(torch.device("cpu"), n=256, iters=2)
    assert peak > 0 and "256x256x256" in desc
    lin = torch.nn.Linear(64, 32, bias=False)
    x = torch.randn(8, 64)
    assert B.count_flops(lambda: lin(x)) == 2 * 8 * 64 * 32      # 2 * M * K * N


def test_variants_plain_has_every_switch_off(smoke_cfg):
    ctx = B.Context(smoke_cfg, torch.device("cpu"), True, 0, 1, 1.0)
    vs = {name: (perf, dtype) for name, perf, dtype in B.variant_list(ctx, "train", "fp16")}
    assert all(vs["plain"][0][s] is False for s in B.SWITCHES) and vs["plain"][1] == "fp32"
    assert vs["preset"][0] == smoke_cfg.perf and vs["preset"][1] == "fp32"   # the CPU runs fp32


def test_speedups_are_ratios_to_plain():
    rows = [B.Row("w", "plain", 2, 10.0, 0.2, None, None, None, None), B.Row("w", "fast", 2, 25.0, 0.08, None, None, None, None)]
    assert [r.speedup_vs_plain for r in B.with_speedups(rows)] == [1.0, 2.5]


@pytest.mark.slow
def test_harness_writes_every_workload(tmp_root):
    cfg = H.load_config("smoke", {"bench.warmup": 0, "bench.iters": 1, "bench.batch_sizes": [1],
                                  "eval.batch_size": 2})
    out = tmp_root / "bench.json"
    result = B.run(cfg, out_path=out)
    saved = json.loads(out.read_text())
    assert saved["tiny"] is True and saved["peak_tflops"] > 0 and saved["device"] == "cpu"
    workloads = {r["workload"] for r in saved["rows"]}
    assert workloads == set(B.WORKLOADS)
    for w in ("ddpm_train", "ddpm_sample", "sd_lora_train", "sd_infer"):
        rows = [r for r in saved["rows"] if r["workload"] == w]
        plain = next(r for r in rows if r["variant"] == "plain")
        assert plain["images_per_s"] > 0 and plain["flops_per_image"] > 0 and plain["speedup_vs_plain"] == 1.0
        assert 0 < plain["fraction_of_peak"]
        assert any(r["variant"] == "preset" for r in rows)
    assert "TINY" in result["table"]
