"""A/B of the fp8 forward's launch configs (CONFIGS["fwd_fp8"]) on two rows of bench/fp8_attention.py.

Each config's output is compared with the first config's (max abs difference; NaN shows a broken
pipeline) and timed next to the bf16 kernel. JSON to $OUT/fp8_ab.json.

    source bench/gpu_setup.sh; python3 bench/fp8_config_ab.py
"""
import os, sys, json
sys.path.insert(0, "."); sys.path.insert(0, "bench")
import torch, triton
from engine.attention import triton_radial as TR
from engine.attention.backends import cached_block_mask
from engine.attention.block_lists import computed_pairs
from engine.attention.triton_radial_fp8 import radial_attention_fp8_lse
res = []
for name, H, T, F_, decay in (("1.3B-480p F=81", 12, 1560, 81, 0.2), ("14B-720p F=21", 40, 3600, 21, 1.0)):
    S = T * F_
    q, k, v = (torch.randn(1, S, H, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    blk = cached_block_mask(F_, T, block_size=128, decay_factor=decay, device="cuda")
    fl = 4 * H * 128 * computed_pairs(blk.cpu(), 128, S)
    key = (F_, T, decay)
    with torch.no_grad():
        ref = radial_attention_fp8_lse(q, k, v, blk, 128, cache_key=key)[0]
        bf = triton.testing.do_bench(lambda: TR.radial_attention_triton(q, k, v, blk, 128, cache_key=key), return_mode="median")
        for cfg in (dict(num_warps=4, num_stages=2, WS=True), dict(num_warps=4, num_stages=3, WS=True),
                    dict(num_warps=4, num_stages=4, WS=True), dict(num_warps=8, num_stages=3, WS=False),
                    dict(num_warps=4, num_stages=2, WS=True, BLOCK_N=64), dict(num_warps=4, num_stages=3, WS=True, BLOCK_N=64)):
            TR.CONFIGS["fwd_fp8"] = dict(BLOCK_M=128, BLOCK_N=128, **cfg) if "BLOCK_N" not in cfg else dict(BLOCK_M=128, **cfg)
            try:
                o = radial_attention_fp8_lse(q, k, v, blk, 128, cache_key=key)[0]
                same = ((o.float() - ref.float()).abs().max().item())
                ms = triton.testing.do_bench(lambda: radial_attention_fp8_lse(q, k, v, blk, 128, cache_key=key), return_mode="median")
                r = dict(shape=name, decay=decay, cfg=cfg, ms=ms, tflops=fl / ms / 1e9, vs_bf16=bf / ms, max_diff_vs_default=same)
            except Exception as e:
                r = dict(shape=name, cfg=cfg, error=str(e)[:200])
            print(json.dumps(r), flush=True); res.append(r)
    print(json.dumps(dict(shape=name, bf16_ms=bf, bf16_tflops=fl / bf / 1e9)), flush=True)
json.dump(res, open(os.environ["OUT"] + "/fp8_ab.json", "w"), indent=1)
