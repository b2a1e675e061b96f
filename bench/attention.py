"""GPU benchmark for Radial Attention: correctness at full size + timing table.

One invocation does everything (meant for one H100 call of < 10 minutes):

1. ceilings: a bf16 8192^3 matmul;
2. a small config sweep of the plain Triton kernels (forward, then backward
   tiles) on one mid shape; the best configs are used for the rest (the
   warp-specialised kernels keep their own configs; skip with --skip-sweep);
3. correctness at full size for every shape: the Triton forward and dQ/dK/dV on
   a one-head strided slice against a chunked fp32 reference (explicit softmax
   and gradients per query chunk, fp32 matmuls), plus a full-width forward
   consistency check and FlexAttention vs Triton; outputs are NaN-poisoned;
4. timing (median) of triton-radial, flex-radial, SDPA flash and SDPA cuDNN
   (dense), forward and forward+backward, bf16, D=128, B=1, block 128.

FLOP convention: forward = 4*B*H*D*pairs, with pairs the (query, key) token
pairs inside computed blocks (S^2 for dense); forward+backward = 3.5x forward
(backward counted as 2.5x forward). Speedups are time ratios.

    PYTHONUNBUFFERED=1 python bench/attention.py --out $OUT

Other modes: --explore (correctness + A/B timing of kernel variants, runs 4-5
and 9), --kernel-ab (v10 vs v11, KERNEL_AB: checks and A B A B times),
--triton-fb-only (WS backward checks + Triton forward+backward times, run 8).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import triton  # noqa: E402
from cuda_timing import event_median_ms  # noqa: E402  (bench/, the script's folder)
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

torch._dynamo.config.cache_size_limit = 64
if hasattr(torch._dynamo.config, "recompile_limit"):
    torch._dynamo.config.recompile_limit = 64

from engine.attention import radial_attention  # noqa: E402
from engine.attention import triton_radial as TR  # noqa: E402
from engine.attention.backends import cached_block_mask  # noqa: E402
from engine.attention.block_lists import clear_cache, computed_pairs  # noqa: E402
from engine.attention.mask import mask_density  # noqa: E402

T0 = time.time()
LOG = []


def log(*a):
    s = " ".join(str(x) for x in a)
    print(f"[{time.time() - T0:6.1f}s] {s}", flush=True)
    LOG.append(s)


SHAPES = [  # name, heads, tokens per frame, latent frames
    ("1.3B-480p", 12, 1560, 21),
    ("1.3B-480p", 12, 1560, 81),
    ("14B-720p", 40, 3600, 21),
    ("14B-720p", 40, 3600, 81),
]
DECAYS = (0.2, 1.0)
D = 128
BS = 128


def timeit(fn, est_hint=None):
    """Median ms. do_bench for short kernels; a few event-timed runs for long ones."""
    torch.cuda.synchronize()
    t = time.time()
    fn()
    torch.cuda.synchronize()
    once = (time.time() - t) * 1e3
    if once > 150:
        return event_median_ms(fn, max(2, min(5, int(1500 / once))))
    return triton.testing.do_bench(fn, warmup=25, rep=150, return_mode="median")


def make_qkv(S, H, requires_grad=False, dtype=torch.bfloat16):
    return [torch.randn(1, S, H, D, device="cuda", dtype=dtype, requires_grad=requires_grad) for _ in range(3)]


def rel(a, b):
    """Relative L2 error; inf when `a` holds a non-finite value (so max() over errors cannot drop a NaN:
    run 7's check reported ok with NaN dK/dV because max(x, nan) == x)."""
    a, b = a.float(), b.float()
    if not bool(torch.isfinite(a).all()):
        return float("inf")
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# ---------------------------------------------------------------- reference
def chunked_reference(q, k, v, do, blk, bs, chunk=2048):
    """fp32 attention forward + grads for [1, S, 1, D] inputs under block mask blk,
    chunked over query rows (memory ~ chunk*S). Exact fp32 matmuls."""
    q, k, v, do = (t[0, :, 0].float() for t in (q, k, v, do))
    S, Dh = q.shape
    scale = 1.0 / math.sqrt(Dh)
    kblk = torch.arange(S, device=q.device) // bs
    o = torch.empty_like(q)
    dq = torch.empty_like(q)
    dk = torch.zeros_like(k)
    dv = torch.zeros_like(v)
    for c0 in range(0, S, chunk):
        c1 = min(S, c0 + chunk)
        qc, doc = q[c0:c1], do[c0:c1]
        allowed = blk[(torch.arange(c0, c1, device=q.device) // bs)][:, kblk]
        s = (qc @ k.T) * scale
        s.masked_fill_(~allowed, float("-inf"))
        p = torch.softmax(s, dim=-1)
        del s
        oc = p @ v
        o[c0:c1] = oc
        dv += p.T @ doc
        dp = doc @ v.T
        delta = (doc * oc).sum(-1, keepdim=True)
        ds = p * (dp - delta)
        del dp, p
        dq[c0:c1] = (ds @ k) * scale
        dk += (ds.T @ qc) * scale
        del ds
    return o, dq, dk, dv


# ---------------------------------------------------------------- pieces
def tri_fwd(q, k, v, T, F_, decay):
    return radial_attention(q, k, v, num_frames=F_, tokens_per_frame=T, decay_factor=decay, block_size=BS,
                            backend="triton")


def flex_fwd(q, k, v, T, F_, decay):
    return radial_attention(q, k, v, num_frames=F_, tokens_per_frame=T, decay_factor=decay, block_size=BS,
                            backend="flex")


def dense(q, k, v, which):
    be = SDPBackend.FLASH_ATTENTION if which == "flash" else SDPBackend.CUDNN_ATTENTION
    with sdpa_kernel([be]):
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))


def fwd_bwd(fn, q, k, v, do):
    def run():
        for t in (q, k, v):
            t.grad = None
        out = fn(q, k, v)
        out.backward(do)
    return run


# ---------------------------------------------------------------- sweep
FWD_CANDIDATES = [  # run 1 (v1): 128x128/8 warps/3 stages best (409 TF/s); 4-warp and 2-stage configs far slower
    dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=4),
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=4),
]
BWD_CANDIDATES = [  # (dkdv, dq); run 1: 4 warps and 128x128 tiles 2.5x slower
    (dict(BLOCK_M=64, BLOCK_N=128, num_warps=8, num_stages=2), dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2)),
    (dict(BLOCK_M=64, BLOCK_N=128, num_warps=8, num_stages=3), dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3)),
    (dict(BLOCK_M=64, BLOCK_N=128, num_warps=8, num_stages=2), dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3)),
]


def sweep(results):
    """Tunes the plain (non-warp-specialised) kernels; the WS flags are restored afterwards."""
    ws_flags = {key: TR.CONFIGS[key].get("WS") for key in ("fwd", "bwd_dkdv", "bwd_dq")}
    _, H, T, F_ = SHAPES[1]
    decay = 1.0
    S = T * F_
    blk = cached_block_mask(F_, T, block_size=BS, decay_factor=decay, device="cuda")
    pairs = computed_pairs(blk.cpu(), BS, S)
    fl = 4 * H * D * pairs
    q, k, v = make_qkv(S, H, requires_grad=True)
    do = torch.randn_like(q)
    best = None
    rows = []
    for cfg in FWD_CANDIDATES:
        TR.CONFIGS["fwd"] = dict(cfg, WS=False)
        clear_cache()
        try:
            with torch.no_grad():
                ms = timeit(lambda: tri_fwd(q, k, v, T, F_, decay))
        except Exception as e:  # a config that fails to compile (e.g. out of shared memory)
            log("fwd cfg", cfg, "failed:", repr(e)[:200])
            continue
        tf = fl / ms / 1e9
        rows.append(("fwd", cfg, ms, tf))
        log(f"sweep fwd {cfg}: {ms:.3f} ms {tf:.0f} TFLOP/s")
        if best is None or ms < best[0]:
            best = (ms, cfg)
    TR.CONFIGS["fwd"] = dict(best[1])
    bbest = None
    for dkdv, dq in BWD_CANDIDATES:
        TR.CONFIGS["bwd_dkdv"], TR.CONFIGS["bwd_dq"] = dict(dkdv, WS=False), dict(dq)
        clear_cache()
        try:
            ms = timeit(fwd_bwd(lambda a, b, c: tri_fwd(a, b, c, T, F_, decay), q, k, v, do))
        except Exception as e:
            log("bwd cfg", dkdv, dq, "failed:", repr(e)[:200])
            continue
        tf = 3.5 * fl / ms / 1e9
        rows.append(("fwd+bwd", (dkdv, dq), ms, tf))
        log(f"sweep fwd+bwd dkdv={dkdv} dq={dq}: {ms:.3f} ms {tf:.0f} TFLOP/s")
        if bbest is None or ms < bbest[0]:
            bbest = (ms, dkdv, dq)
    TR.CONFIGS["bwd_dkdv"], TR.CONFIGS["bwd_dq"] = dict(bbest[1]), dict(bbest[2])
    for key, flag in ws_flags.items():
        TR.CONFIGS[key]["WS"] = flag
    clear_cache()
    log("chosen configs:", json.dumps(TR.CONFIGS))
    results["sweep"] = [dict(kind=r[0], cfg=r[1], ms=r[2], tflops=r[3]) for r in rows]
    results["configs"] = json.loads(json.dumps(TR.CONFIGS))
    del q, k, v, do


def order_ab(results):
    """Launch order A/B (natural vs heaviest-first) on the largest shape, forward."""
    from engine.attention import block_lists

    _, H, T, F_ = SHAPES[3]
    S, decay = T * F_, 0.2
    q, k, v = make_qkv(S, H)
    out = {}
    keep = block_lists.HEAVIEST_FIRST
    for hf in (False, True, False):
        block_lists.HEAVIEST_FIRST = hf
        with torch.no_grad():
            ms = timeit(lambda: tri_fwd(q, k, v, T, F_, decay))
        out.setdefault("heaviest_first" if hf else "natural", []).append(ms)
        log(f"order A/B S={S} decay={decay} heaviest_first={hf}: fwd {ms:.1f} ms")
    block_lists.HEAVIEST_FIRST = keep
    results["order_ab_fwd_ms"] = out
    del q, k, v
    torch.cuda.empty_cache()


# ---------------------------------------------------------------- correctness
def random_mask_check(dtype, Dh, bs, S, H):
    """Triton forward + grads on a random block mask (diagonal kept) vs fp64 masked SDPA:
    (max relative error over out, dQ, dK, dV; all finite)."""
    n = -(-S // bs)
    blk = torch.rand(n, n, device="cuda") < 0.4
    blk.fill_diagonal_(True)
    q, k, v = (torch.randn(2, S, H, Dh, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)
    o = TR.radial_attention_triton(q, k, v, blk, bs)
    o.backward(do)
    idx = torch.arange(S, device="cuda") // bs
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(qd.transpose(1, 2), kd.transpose(1, 2), vd.transpose(1, 2),
                                         attn_mask=blk[idx][:, idx]).transpose(1, 2)
    ref.backward(do.double())
    e = max(rel(o, ref), rel(q.grad, qd.grad), rel(k.grad, kd.grad), rel(v.grad, vd.grad))
    return e, all(bool(torch.isfinite(t).all()) for t in (o, q.grad, k.grad, v.grad))


def small_checks():
    """fp16 / bf16, D=64/128, mask blocks 64/128, S not a block multiple, random masks."""
    errs = []
    for dtype, Dh, bs, S, H in ((torch.float16, 64, 64, 1000, 3), (torch.bfloat16, 128, 128, 777, 2),
                                (torch.bfloat16, 64, 128, 2049, 2), (torch.float16, 128, 64, 1536, 1)):
        e, _ = random_mask_check(dtype, Dh, bs, S, H)  # rel() is inf for non-finite outputs
        log(f"small check {dtype} D={Dh} bs={bs} S={S}: max rel err {e:.2e}")
        errs.append(e)
    return max(errs) < 1e-2


def one_head_check(q, k, v, do, blk, T, F_, decay):
    """Head H//2 of [1, S, H, D] tensors as a strided view (no copy): Triton forward + grads vs the chunked
    fp32 reference. Returns (relative errors of out/dq/dk/dv, the one-head Triton (out, dq, dk, dv))."""
    h0 = q.shape[2] // 2
    qs, ks, vs = (t[:, :, h0:h0 + 1].detach().requires_grad_() for t in (q, k, v))
    dos = do[:, :, h0:h0 + 1]
    o1 = tri_fwd(qs, ks, vs, T, F_, decay)
    o1.backward(dos)
    ro, rdq, rdk, rdv = chunked_reference(qs.detach(), ks.detach(), vs.detach(), dos, blk, BS)
    errs = dict(out=rel(o1[0, :, 0], ro), dq=rel(qs.grad[0, :, 0], rdq), dk=rel(ks.grad[0, :, 0], rdk),
                dv=rel(vs.grad[0, :, 0], rdv))
    return errs, (o1.detach(), qs.grad, ks.grad, vs.grad)


def check(results):
    TR.POISON_OUTPUTS = True
    out = []
    results["small_checks_ok"] = small_checks() and ws_vs_plain(results)
    TR.POISON_OUTPUTS = True
    for name, H, T, F_ in SHAPES:
        S = T * F_
        for decay in DECAYS:
            blk = cached_block_mask(F_, T, block_size=BS, decay_factor=decay, device="cuda")
            q, k, v = make_qkv(S, H)
            do = torch.randn_like(q)
            h0 = H // 2
            errs, (o1, *_) = one_head_check(q, k, v, do, blk, T, F_, decay)
            with torch.no_grad():
                ofull = tri_fwd(q, k, v, T, F_, decay)
                errs["full_vs_slice"] = rel(ofull[:, :, h0:h0 + 1], o1.detach())
                errs["finite_full"] = bool(torch.isfinite(ofull).all().item())
                if decay == DECAYS[0]:
                    of = flex_fwd(q, k, v, T, F_, decay)
                    errs["flex_vs_triton"] = rel(of, ofull)
            ok = (max(errs["out"], errs["dq"], errs["dk"], errs["dv"]) < 1e-2 and errs["finite_full"]
                  and errs["full_vs_slice"] < 1e-6 and errs.get("flex_vs_triton", 0) < 1e-2)
            errs.update(shape=f"{name} F={F_}", decay=decay, S=S, density=mask_density(blk), ok=ok)
            log("check", json.dumps(errs))
            out.append(errs)
            del q, k, v, do, o1, ofull
            torch.cuda.empty_cache()
    TR.POISON_OUTPUTS = False
    results["correctness"] = out
    return all(e["ok"] for e in out) and results["small_checks_ok"]


# ---------------------------------------------------------------- variant exploration
# Runs 4-5 explored fused dK/dV/dQ backwards with fp32 atomics, a host-TMA forward and the WS forward /
# dK/dV kernels (docs/kernel_notes.md v4-v6). Runs 9-10: the warp-specialised dQ kernel and the
# forward's tail split (v9, v10).
BWD_VARIANTS = [  # name, {CONFIGS key: overrides}; the first is the baseline of the table
    ("bwd dq plain", dict(bwd_dq=dict(WS=False))),
    ("bwd dq-ws 128x128 s2", dict(bwd_dq=dict(WS=True), bwd_dq_ws=dict(BLOCK_N=128, num_stages=2))),
]
# Run 9 also timed dq-ws 128x64 at 2 and 3 stages: within 1% of 128x128 s2 or behind it (kernel_notes v9).
FWD_VARIANTS = [  # name, {CONFIGS key: overrides}; the first is the baseline
    ("fwd ws mask-all (v7)", dict(fwd_ws=dict(TAIL_SPLIT=False))),
    ("fwd ws tail-split", dict(fwd_ws=dict(TAIL_SPLIT=True))),
]
# Flex times of run 7 (same benchmark, same machine kind) for the projected ratios of the table.
RUN7_FLEX_FB = {("1.3B-480p F=21", 0.2): 22.47, ("1.3B-480p F=81", 1.0): 187.25,
                ("14B-720p F=21", 0.2): 298.74, ("14B-720p F=81", 0.2): 2067.88}
RUN7_FLEX_F = {("1.3B-480p F=21", 0.2): 6.58, ("1.3B-480p F=81", 1.0): 53.20,
               ("14B-720p F=21", 0.2): 86.92, ("14B-720p F=81", 0.2): 613.00}
EXPLORE_SHAPES = [SHAPES[2] + (0.2,), SHAPES[3] + (0.2,), SHAPES[1] + (1.0,), SHAPES[0] + (0.2,)]
_BASE_CONFIGS = json.loads(json.dumps(TR.CONFIGS))


def _set_variant(*overrides):
    TR.CONFIGS.clear()
    TR.CONFIGS.update(json.loads(json.dumps(_BASE_CONFIGS)))
    for ov in overrides:
        for key, kv in (ov or {}).items():
            TR.CONFIGS[key].update(kv)
    clear_cache()


def event_median(fn, budget_ms=1500.0, min_n=3, max_n=20):
    torch.cuda.synchronize()
    t = time.time()
    fn()
    torch.cuda.synchronize()
    once = (time.time() - t) * 1e3
    fn()  # second warm-up (the first may have compiled)
    return event_median_ms(fn, int(max(min_n, min(max_n, budget_ms / max(once, 1e-3)))))


def explore(results, out_dir, stop_s=480.0):
    """Correctness then timing of backward / forward variants (one call); table printed last."""
    TR.POISON_OUTPUTS = True
    checks = []
    ws_ok = ws_vs_plain(results)
    # small random-mask checks for the new paths
    for name, cfg in BWD_VARIANTS[1:]:
        for fwdv in FWD_VARIANTS:
            _set_variant(cfg, fwdv[1])
            for dtype, Dh, bs, S, H in ((torch.float16, 64, 64, 1000, 3), (torch.bfloat16, 128, 128, 777, 2)):
                e, finite = random_mask_check(dtype, Dh, bs, S, H)
                ok = e < 1e-2 and finite
                log(f"small check {name} / {fwdv[0]} {dtype} D={Dh} bs={bs} S={S}: max rel err {e:.2e} ok={ok}")
                checks.append(dict(kind="small", variant=name, fwd=fwdv[0], S=S, D=Dh, err=e, ok=ok))
    # full-size one-head checks vs the chunked fp32 reference, every variant
    for name_, H, T, F_, decay in (EXPLORE_SHAPES[3], EXPLORE_SHAPES[1]):  # 480p-21f, 720p-81f
        S = T * F_
        blk = cached_block_mask(F_, T, block_size=BS, decay_factor=decay, device="cuda")
        q, k, v = make_qkv(S, H)
        do = torch.randn_like(q)
        h0 = H // 2
        sl = [t[:, :, h0:h0 + 1] for t in (q, k, v, do)]
        ro, rdq, rdk, rdv = chunked_reference(*sl, blk, BS)
        _set_variant()
        with torch.no_grad():
            o_base = tri_fwd(q, k, v, T, F_, decay)
        for fname, fcfg in FWD_VARIANTS:
            _set_variant(fcfg)
            with torch.no_grad():
                of = tri_fwd(q, k, v, T, F_, decay)
            e = dict(vs_base=rel(of, o_base), finite=bool(torch.isfinite(of).all()))
            e["ok"] = e["finite"] and e["vs_base"] < 1e-2
            log(f"check {fname} {name_} F={F_} decay={decay}: {json.dumps(e)}")
            checks.append(dict(kind="fwd_full", variant=fname, S=S, **e))
            del of
        for vname, cfg in BWD_VARIANTS:
            for fname, fcfg in FWD_VARIANTS[:1] if vname != BWD_VARIANTS[0][0] else FWD_VARIANTS:
                _set_variant(cfg, fcfg)
                qs, ks, vs = (t.detach().requires_grad_() for t in sl[:3])
                o1 = TR.radial_attention_triton(qs, ks, vs, blk, BS)
                o1.backward(sl[3])
                e = dict(out=rel(o1[0, :, 0], ro), dq=rel(qs.grad[0, :, 0], rdq), dk=rel(ks.grad[0, :, 0], rdk),
                         dv=rel(vs.grad[0, :, 0], rdv))
                e["ok"] = max(e.values()) < 1e-2 and all(bool(torch.isfinite(t).all())
                                                         for t in (o1, qs.grad, ks.grad, vs.grad))
                log(f"check {vname} / {fname} {name_} F={F_} decay={decay}: {json.dumps(e)}")
                checks.append(dict(kind="full", variant=vname, fwd=fname, S=S, **e))
                del qs, ks, vs, o1
        del q, k, v, do, sl, ro, rdq, rdk, rdv, o_base
        torch.cuda.empty_cache()
    TR.POISON_OUTPUTS = False
    good = all(c["ok"] for c in checks) and ws_ok
    log("explore correctness", "PASS" if good else "FAIL")
    results["explore_checks"] = checks

    rows = []
    for name_, H, T, F_, decay in EXPLORE_SHAPES:
        S = T * F_
        blk = cached_block_mask(F_, T, block_size=BS, decay_factor=decay, device="cuda")
        q, k, v = make_qkv(S, H)
        do = torch.randn_like(q)
        scale = 1.0 / math.sqrt(D)
        for fname, fcfg in FWD_VARIANTS * 2:  # two rounds, interleaved: A B A B
            _set_variant(fcfg)
            plan = TR._Plan(blk, BS, S, q.device, None)
            ms = event_median(lambda: TR._fwd(q, k, v, plan, scale))
            rows.append(dict(shape=f"{name_} F={F_}", decay=decay, S=S, variant=fname, ms=ms))
            log(f"time {fname} {name_} F={F_} decay={decay}: {ms:.2f} ms")
        _set_variant()
        plan = TR._Plan(blk, BS, S, q.device, None)
        o, lse = TR._fwd(q, k, v, plan, scale)
        for vname, cfg in BWD_VARIANTS:
            if time.time() - T0 > stop_s:
                log(f"skip {vname} at S={S}: explore time budget")
                continue
            _set_variant(cfg)
            plan = TR._Plan(blk, BS, S, q.device, None)
            try:
                ms = event_median(lambda: TR._bwd(do, q, k, v, o, lse, plan, scale))
            except Exception as ex:  # compile failure (shared memory) etc.
                log(f"bwd variant {vname} failed: {repr(ex)[:300]}")
                continue
            rows.append(dict(shape=f"{name_} F={F_}", decay=decay, S=S, variant=vname, ms=ms))
            log(f"time {vname} {name_} F={F_} decay={decay}: bwd {ms:.2f} ms")
        del q, k, v, do, o, lse
        torch.cuda.empty_cache()
    results["explore_timing"] = rows
    _set_variant()
    # table: bwd variants relative to the first, and projected f+b = fwd + bwd vs run-7 flex f+b
    lines = ["| shape | decay | variant | ms | vs first bwd / fwd | fwd + this bwd (ms) | run-7 flex f+b / that |",
             "|---|---|---|---|---|---|---|"]
    for key in RUN7_FLEX_FB:
        sub = [r for r in rows if (r["shape"], r["decay"]) == key]
        det_ms = next((r["ms"] for r in sub if r["variant"] == BWD_VARIANTS[0][0]), float("nan"))
        f_first = next((r["ms"] for r in sub if r["variant"] == FWD_VARIANTS[0][0]), float("nan"))
        fptr = min((r["ms"] for r in sub if r["variant"].startswith("fwd")), default=float("nan"))  # best fwd
        for r in sub:
            if r["variant"].startswith("fwd"):
                lines.append(f"| {key[0]} | {key[1]} | {r['variant']} | {r['ms']:.2f} | {f_first / r['ms']:.3f}x "
                             f"| | run-7 flex fwd / this: {RUN7_FLEX_F[key] / r['ms']:.2f}x |")
            else:
                fb = fptr + r["ms"]
                lines.append(f"| {key[0]} | {key[1]} | {r['variant']} | {r['ms']:.2f} | {det_ms / r['ms']:.3f}x "
                             f"| {fb:.2f} | {RUN7_FLEX_FB[key] / fb:.2f}x |")
    tab = "\n".join(lines)
    with open(os.path.join(out_dir, "explore_table.md"), "w") as f:
        f.write(tab + "\n")
    return good, tab


# The A/B of kernel v11 (--kernel-ab) against v10: the forward's software-pipelined WS loop (PIPELINE) and the
# backward passes' dP-before-exp order (DP_FIRST). Forward and backward are timed apart, so each part's flags
# are judged on their own.
KERNEL_AB = [
    ("v10", dict(fwd_ws=dict(TAIL_SPLIT=True, PIPELINE=False), bwd_dkdv_ws=dict(DP_FIRST=False),
                 bwd_dq_ws=dict(DP_FIRST=False))),
    ("v11", dict(fwd_ws=dict(TAIL_SPLIT=True, PIPELINE=True), bwd_dkdv_ws=dict(DP_FIRST=True),
                 bwd_dq_ws=dict(DP_FIRST=True))),
]


def kernel_ab(results, out_dir, rounds=2, quick=False):
    """KERNEL_AB's kernels: random-mask checks against fp64 SDPA, one-head checks against the fp32 reference
    at two full-size shapes (NaN-poisoned outputs; each variant's output and grads also compared with the
    first's), then A B A B forward and backward times with TFLOP/s on every row of the main table.
    quick: one random-mask case, the 720p-81f check and three rows (a short device lease)."""
    small = ((torch.float16, 64, 64, 1000, 3), (torch.bfloat16, 128, 128, 777, 2), (torch.bfloat16, 64, 128, 2049, 2))
    full = ((SHAPES[0], 0.2), (SHAPES[3], 0.2))
    rows_wanted = [(s, d) for s in SHAPES for d in DECAYS]
    if quick:
        small, full = small[1:2], full[1:]
        rows_wanted = [(SHAPES[2], 0.2), (SHAPES[3], 0.2), (SHAPES[1], 1.0)]
    TR.POISON_OUTPUTS = True
    checks = []
    for vname, cfg in KERNEL_AB:
        _set_variant(cfg)
        for dtype, Dh, bs, S, H in small:
            e, finite = random_mask_check(dtype, Dh, bs, S, H)
            checks.append(dict(kind="small", variant=vname, S=S, D=Dh, dtype=str(dtype), err=e,
                               ok=e < 1e-2 and finite))
            log(f"small check {vname} {dtype} D={Dh} bs={bs} S={S}: max rel err {e:.2e}")
    for (name, H, T, F_), decay in full:
        S = T * F_
        blk = cached_block_mask(F_, T, block_size=BS, decay_factor=decay, device="cuda")
        q, k, v = make_qkv(S, H)
        do = torch.randn_like(q)
        first = None
        for vname, cfg in KERNEL_AB:
            _set_variant(cfg)
            errs, got = one_head_check(q, k, v, do, blk, T, F_, decay)
            if first is None:
                first = got
            errs.update(vs_first=max(rel(a, b) for a, b in zip(got, first)),
                        bitwise_first=[bool(torch.equal(a, b)) for a, b in zip(got, first)])
            errs["ok"] = max(errs["out"], errs["dq"], errs["dk"], errs["dv"], errs["vs_first"]) < 1e-2
            checks.append(dict(kind="full", variant=vname, shape=f"{name} F={F_}", decay=decay, S=S, **errs))
            log(f"check {vname} {name} F={F_} decay={decay}: {json.dumps(errs)}")
            del got
        del q, k, v, do, first
        torch.cuda.empty_cache()
    TR.POISON_OUTPUTS = False
    good = all(c["ok"] for c in checks)
    log("kernel A/B correctness", "PASS" if good else "FAIL")
    results["kernel_ab_checks"] = checks

    rows = []
    scale = 1.0 / math.sqrt(D)
    for name, H, T, F_ in SHAPES:
        S = T * F_
        decays = [d for (shape, d) in rows_wanted if shape == (name, H, T, F_)]
        if not decays:
            continue
        q, k, v = make_qkv(S, H)
        do = torch.randn_like(q)
        for decay in decays:
            blk = cached_block_mask(F_, T, block_size=BS, decay_factor=decay, device="cuda")
            fl = 4 * H * D * computed_pairs(blk.cpu(), BS, S)
            for vname, cfg in KERNEL_AB * rounds:  # interleaved rounds: A B A B
                _set_variant(cfg)
                plan = TR._Plan(blk, BS, S, q.device, None)
                f_ms = event_median(lambda: TR._fwd(q, k, v, plan, scale))
                o, lse = TR._fwd(q, k, v, plan, scale)
                b_ms = event_median(lambda: TR._bwd(do, q, k, v, o, lse, plan, scale))
                del o, lse
                rows.append(dict(shape=f"{name} F={F_}", S=S, decay=decay, variant=vname, fwd_ms=f_ms, bwd_ms=b_ms,
                                 fwd_tflops=fl / f_ms / 1e9, fb_tflops=3.5 * fl / (f_ms + b_ms) / 1e9))
                log(f"time {vname} {name} F={F_} decay={decay}: fwd {f_ms:.3f} ms ({fl / f_ms / 1e9:.0f} TF/s), "
                    f"bwd {b_ms:.3f} ms, f+b {3.5 * fl / (f_ms + b_ms) / 1e9:.0f} TF/s")
        del q, k, v, do
        torch.cuda.empty_cache()
    _set_variant()
    results["kernel_ab_timing"] = rows
    names = [v for v, _ in KERNEL_AB]
    lines = ["| shape | decay | " + " | ".join(f"{v} fwd ms (TF/s)" for v in names) + " | "
             + " | ".join(f"{v} bwd ms" for v in names) + " | " + " | ".join(f"{v} f+b TF/s" for v in names)
             + " | fwd: first / last | bwd: first / last |",
             "|" + "---|" * (4 + 3 * len(names))]
    for (name, H, T, F_), decay in rows_wanted:
        sub = [r for r in rows if r["shape"] == f"{name} F={F_}" and r["decay"] == decay]
        m = {(v, key): sum(r[key] for r in sub if r["variant"] == v) / rounds
             for v in names for key in ("fwd_ms", "bwd_ms", "fwd_tflops", "fb_tflops")}
        a, z = names[0], names[-1]
        lines.append(f"| {name} F={F_} | {decay} | "
                     + " | ".join(f"{m[v, 'fwd_ms']:.2f} ({m[v, 'fwd_tflops']:.0f})" for v in names) + " | "
                     + " | ".join(f"{m[v, 'bwd_ms']:.2f}" for v in names) + " | "
                     + " | ".join(f"{m[v, 'fb_tflops']:.0f}" for v in names) + " | "
                     + f"{m[a, 'fwd_ms'] / m[z, 'fwd_ms']:.3f}x | {m[a, 'bwd_ms'] / m[z, 'bwd_ms']:.3f}x |")
    tab = "\n".join(lines)
    with open(os.path.join(out_dir, "kernel_ab_table.md"), "w") as f:
        f.write(tab + "\n")
    return good, tab


def ws_vs_plain(results):
    """Each warp-specialised backward pass against its plain kernel on full-width tensors, WS called twice
    (a pipeline race shows as a difference between calls, run 7): radial 480p-21f, and random masks at odd
    lengths (S % 4 != 0 exercises the padded LSE rows the WS dQ kernel reads through TMA)."""
    TR.POISON_OUTPUTS = True
    ok = True
    cases = [("radial 480p-21f", torch.bfloat16, D, BS, SHAPES[0][2] * SHAPES[0][3], SHAPES[0][1]),
             ("random", torch.float16, 64, 64, 1001, 3), ("random", torch.bfloat16, 128, 128, 2049, 2)]
    rows = []
    for label, dtype, Dh, bs, S, H in cases:
        if label.startswith("radial"):
            blk = cached_block_mask(SHAPES[0][3], SHAPES[0][2], block_size=BS, decay_factor=0.2, device="cuda")
        else:
            n = -(-S // bs)
            blk = torch.rand(n, n, device="cuda") < 0.4
            blk.fill_diagonal_(True)
        q, k, v = (torch.randn(1, S, H, Dh, device="cuda", dtype=dtype) for _ in range(3))
        do = torch.randn_like(q)
        for key, grads in (("bwd_dkdv", (1, 2)), ("bwd_dq", (0,))):
            keep = TR.CONFIGS[key].get("WS")
            res = []
            for ws in (False, True, True):
                TR.CONFIGS[key]["WS"] = ws
                qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
                TR.radial_attention_triton(qq, kk, vv, blk, bs).backward(do)
                res.append([(qq.grad, kk.grad, vv.grad)[i] for i in grads])
            TR.CONFIGS[key]["WS"] = keep
            for call in (1, 2):
                e = max(rel(a, b) for a, b in zip(res[call], res[0]))
                same = all(torch.equal(a, b) for a, b in zip(res[call], res[0]))
                ok &= e < 1e-2
                rows.append(dict(case=label, S=S, D=Dh, dtype=str(dtype), pass_=key, call=call, rel=e, bitwise=same))
                log(f"WS vs plain {key} {label} S={S} D={Dh} {dtype} (call {call}): rel {e:.2e} bitwise {same}")
        del q, k, v, do
    TR.POISON_OUTPUTS = False
    results["ws_vs_plain"] = rows
    return ok


def triton_fb_only(results):
    """Run 8: WS vs plain backward kernels, one-head checks against the fp32 reference, then Triton
    forward+backward times only (the baselines come from a full run)."""
    ok = ws_vs_plain(results)
    TR.POISON_OUTPUTS = True
    for (name, H, T, F_), decay in ((SHAPES[0], 0.2), (SHAPES[3], 0.2)):
        S = T * F_
        blk = cached_block_mask(F_, T, block_size=BS, decay_factor=decay, device="cuda")
        q, k, v = make_qkv(S, H)
        do = torch.randn_like(q)
        e, _ = one_head_check(q, k, v, do, blk, T, F_, decay)
        ok &= max(e.values()) < 1e-2
        log(f"one-head check {name} F={F_} decay={decay}: {json.dumps(e)}")
        del q, k, v, do
        torch.cuda.empty_cache()
    TR.POISON_OUTPUTS = False
    rows = []
    for name, H, T, F_ in SHAPES:
        S = T * F_
        q, k, v = make_qkv(S, H, requires_grad=True)
        do = torch.randn_like(q)
        for decay in DECAYS:
            f = lambda a, b, c, T=T, F_=F_, decay=decay: tri_fwd(a, b, c, T, F_, decay)  # noqa: E731
            ms = timeit(fwd_bwd(f, q, k, v, do))
            rows.append(dict(shape=f"{name} F={F_}", decay=decay, triton_fb_ms=ms))
            log(f"triton f+b {name} F={F_} decay={decay}: {ms:.2f} ms")
        del q, k, v, do
        torch.cuda.empty_cache()
    results["triton_fb_only"] = rows
    return ok, rows


# ---------------------------------------------------------------- timing
def timing(results, budget_s, no_flash_fb=False):
    rows = []
    dense_done = {}
    for name, H, T, F_ in SHAPES:
        S = T * F_
        q, k, v = make_qkv(S, H, requires_grad=True)
        do = torch.randn_like(q)
        dense_fl = 4 * H * D * S * S
        for decay in DECAYS:
            blk = cached_block_mask(F_, T, block_size=BS, decay_factor=decay, device="cuda")
            pairs = computed_pairs(blk.cpu(), BS, S)
            fl = 4 * H * D * pairs
            row = dict(shape=f"{name} F={F_}", S=S, H=H, decay=decay, density=pairs / (S * S))
            for be, fn in (("triton", tri_fwd), ("flex", flex_fwd)):
                f = lambda a, b, c, fn=fn: fn(a, b, c, T, F_, decay)  # noqa: E731
                with torch.no_grad():
                    row[f"{be}_fwd_ms"] = timeit(lambda: f(q, k, v))
                row[f"{be}_fb_ms"] = timeit(fwd_bwd(f, q, k, v, do))
                row[f"{be}_fwd_tflops"] = fl / row[f"{be}_fwd_ms"] / 1e9
                row[f"{be}_fb_tflops"] = 3.5 * fl / row[f"{be}_fb_ms"] / 1e9
            if S not in dense_done:
                dd = {}
                for which in ("cudnn", "flash"):  # cuDNN first: the budget guard should drop flash f+b, not cuDNN
                    f = lambda a, b, c, w=which: dense(a, b, c, w)  # noqa: E731
                    with torch.no_grad():
                        dd[f"{which}_fwd_ms"] = timeit(lambda: f(q, k, v))
                    if time.time() - T0 < budget_s and not (which == "flash" and no_flash_fb):
                        dd[f"{which}_fb_ms"] = timeit(fwd_bwd(f, q, k, v, do.transpose(1, 2)))
                    else:
                        dd[f"{which}_fb_ms"] = float("nan")
                        log(f"skip dense {which} fwd+bwd at S={S}: time budget or --no-flash-fb")
                    dd[f"{which}_fwd_tflops"] = dense_fl / dd[f"{which}_fwd_ms"] / 1e9
                    dd[f"{which}_fb_tflops"] = 3.5 * dense_fl / dd[f"{which}_fb_ms"] / 1e9
                dense_done[S] = dd
            row.update(dense_done[S])
            log("time", json.dumps(row))
            rows.append(row)
        del q, k, v, do
        torch.cuda.empty_cache()
    results["timing"] = rows
    return rows


def table(rows):
    hdr = ("| shape | S | decay | density | triton fwd ms (TF/s) | flex fwd ms (TF/s) | cuDNN fwd ms | flash fwd ms "
           "| fwd: flex/triton | fwd: cuDNN/triton | triton f+b ms (TF/s) | flex f+b ms (TF/s) | cuDNN f+b ms "
           "| flash f+b ms | f+b: flex/triton | f+b: cuDNN/triton |")
    lines = [hdr, "|" + "---|" * (hdr.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['S']} | {r['decay']} | {r['density']:.3f} "
            f"| {r['triton_fwd_ms']:.2f} ({r['triton_fwd_tflops']:.0f}) | {r['flex_fwd_ms']:.2f} ({r['flex_fwd_tflops']:.0f}) "
            f"| {r['cudnn_fwd_ms']:.1f} | {r['flash_fwd_ms']:.1f} "
            f"| {r['flex_fwd_ms'] / r['triton_fwd_ms']:.2f}x | {r['cudnn_fwd_ms'] / r['triton_fwd_ms']:.2f}x "
            f"| {r['triton_fb_ms']:.2f} ({r['triton_fb_tflops']:.0f}) | {r['flex_fb_ms']:.2f} ({r['flex_fb_tflops']:.0f}) "
            f"| {r['cudnn_fb_ms']:.1f} | {r['flash_fb_ms']:.1f} "
            f"| {r['flex_fb_ms'] / r['triton_fb_ms']:.2f}x | {r['cudnn_fb_ms'] / r['triton_fb_ms']:.2f}x |"
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--heaviest-first", action="store_true", help="launch heaviest tiles first (v2 order)")
    ap.add_argument("--explore", action="store_true", help="backward/forward variant A/B only (runs 4-5)")
    ap.add_argument("--kernel-ab", action="store_true",
                    help="kernel A/B only (KERNEL_AB, v10 vs v11): checks, then forward and backward times with TF/s")
    ap.add_argument("--quick", action="store_true", help="with --kernel-ab: fewer checks and three rows")
    ap.add_argument("--triton-fb-only", action="store_true",
                    help="WS dK/dV checks + Triton forward+backward times only (run 8)")
    ap.add_argument("--no-flash-fb", action="store_true",
                    help="skip SDPA flash forward+backward (not in the table; saves minutes)")
    ap.add_argument("--dense-budget-s", type=float, default=480.0,
                    help="skip dense fwd+bwd once the run has lasted this long")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    from engine.attention import block_lists
    block_lists.HEAVIEST_FIRST = args.heaviest_first
    torch.manual_seed(0)
    results = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__)
    log("device", results)

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = triton.testing.do_bench(lambda: a @ a, return_mode="median")
    results["matmul_bf16_tflops"] = 2 * 8192**3 / ms / 1e9
    log(f"bf16 matmul 8192^3: {results['matmul_bf16_tflops']:.0f} TFLOP/s")
    del a

    if args.triton_fb_only:
        good, rows = triton_fb_only(results)
        with open(os.path.join(args.out, "attention_results.json"), "w") as f:
            json.dump(results, f, indent=1)
        print(f"correctness {'PASS' if good else 'FAIL'}")
        print(json.dumps(rows))
        return
    for wanted, label, mode in ((args.kernel_ab, "kernel A/B", kernel_ab), (args.explore, "explore", explore)):
        if not wanted:
            continue
        good, tab = mode(results, args.out, quick=args.quick) if mode is kernel_ab else mode(results, args.out)
        results["elapsed_s"] = time.time() - T0
        with open(os.path.join(args.out, "attention_results.json"), "w") as f:
            json.dump(results, f, indent=1)
        print()
        print(f"device {results['device']} torch {results['torch']} triton {results['triton']}; "
              f"bf16 matmul {results['matmul_bf16_tflops']:.0f} TFLOP/s; {label} correctness "
              f"{'PASS' if good else 'FAIL'}; elapsed {results['elapsed_s']:.0f} s")
        print(tab)
        return
    if not args.skip_sweep:
        sweep(results)
    order_ab(results)
    good = check(results)
    log("correctness", "PASS" if good else "FAIL")
    rows = timing(results, args.dense_budget_s, args.no_flash_fb)
    results["elapsed_s"] = time.time() - T0
    with open(os.path.join(args.out, "attention_results.json"), "w") as f:
        json.dump(results, f, indent=1)
    tab = table(rows)
    with open(os.path.join(args.out, "attention_table.md"), "w") as f:
        f.write(tab + "\n")
    print()
    print(f"device {results['device']} torch {results['torch']} triton {results['triton']}; "
          f"bf16 matmul {results['matmul_bf16_tflops']:.0f} TFLOP/s; correctness {'PASS' if good else 'FAIL'}; "
          f"configs {json.dumps(results.get('configs', TR.CONFIGS))}")
    print(tab)


if __name__ == "__main__":
    main()
