"""GPU check of the TTA path on the tiny backbones in bfloat16, plus 1.3B-shaped timing (random weights).

Run from the repo root on a CUDA machine: `python bench/tta_gpu_check.py` (writes $OUT/gpu_check.json or /tmp).
Needs diffusers, peft, ftfy (the engine requirements); no model download.
"""
import copy, json, os, sys, time
os.environ.setdefault("RADIAL_STUDIO_CACHE", "/tmp/rs-cache")
import torch
sys.path.insert(0, os.getcwd())
from engine.presets import load_preset
from engine.data.synthetic import render_clip
from engine.workers.tta import Clip, VideoSession, SampleSettings, AdaptSettings, adapt, _load_model, resolve_preset
from engine.metrics import continuation_metrics

out = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0)}
frames = render_clip(0, 65, 64, 64).frames
for name in ["tiny-wan", "tiny-skyreels-df", "tiny-wan-vace"]:
    preset, mode = resolve_preset(name)
    preset = copy.deepcopy(preset); preset["dtype"] = "bfloat16"
    pipe, fam = _load_model(preset)
    clip = Clip("c", None, "a red circle", frames, 16.0, (64, 64))
    for objective in ["diffusion", "continuation"]:
        s = VideoSession(pipe, fam, mode, clip, cond_frames=33, seed=0, sample=SampleSettings(4, 5.0, ""))
        t0 = time.time(); base_lat, base = s.generate(); tb = time.time() - t0
        res = {}
        info = adapt(s, AdaptSettings(rank=8, lr=5e-3, steps=10, objective=objective),
                     on_snapshot=lambda st, i: res.update(gen=s.generate(), info=i))
        lat, fr = res["gen"]
        prefix_ok = bool(torch.equal(lat[:, :, :9], s.cond.float())) if mode != "vace" else None
        m = continuation_metrics(fr, frames, 33, lpips=False)
        out[f"{name}/{objective}"] = {"dtype": str(pipe.transformer.dtype), "probe": info["probe"], "prefix_equal": prefix_ok,
            "loss_first_last": [info["losses"][0], info["losses"][-1]], "baseline_sample_s": round(tb, 2),
            "psnr": m["psnr"], "peft_left": bool(getattr(pipe.transformer, "peft_config", None))}
        print(name, objective, json.dumps(out[f"{name}/{objective}"]), flush=True)

# 1.3B-shaped timing (random init, bf16): TTA step on 9 latent frames and one sampling forward on 17, 256x448
from diffusers import SkyReelsV2Transformer3DModel
from engine.lora import add_lora
cfg = dict(num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
           ffn_dim=8960, num_layers=30, inject_sample_info=True)
with torch.device("cuda"):
    tr = SkyReelsV2Transformer3DModel(**cfg).to(torch.bfloat16)
params = add_lora(tr, 16, 16, 0.0, ["to_q", "to_k", "to_v", "to_out.0"], seed=0)
for p in params: p.data = p.data.float()
opt = torch.optim.AdamW(params, lr=2e-4)
emb = torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16)
x9 = torch.randn(1, 16, 9, 32, 56, device="cuda", dtype=torch.bfloat16)
ts9 = torch.full((1, 9), 500.0, device="cuda")
def train_step():
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = tr(hidden_states=x9, timestep=ts9, encoder_hidden_states=emb, enable_diffusion_forcing=True, fps=[0], return_dict=False)[0]
    loss = y.float().pow(2).mean(); loss.backward(); opt.step(); opt.zero_grad()
for _ in range(2): train_step()
torch.cuda.synchronize(); t0 = time.time()
for _ in range(5): train_step()
torch.cuda.synchronize(); step_s = (time.time() - t0) / 5
x17 = torch.randn(1, 16, 17, 32, 56, device="cuda", dtype=torch.bfloat16); ts17 = torch.full((1, 17), 500.0, device="cuda")
with torch.no_grad():
    for _ in range(2): tr(hidden_states=x17, timestep=ts17, encoder_hidden_states=emb, enable_diffusion_forcing=True, fps=[0])
    torch.cuda.synchronize(); t0 = time.time()
    for _ in range(5): tr(hidden_states=x17, timestep=ts17, encoder_hidden_states=emb, enable_diffusion_forcing=True, fps=[0])
    torch.cuda.synchronize(); fwd_s = (time.time() - t0) / 5
out["1.3B_shaped"] = {"tta_step_s_9lat_256x448": round(step_s, 4), "sample_forward_s_17lat_256x448": round(fwd_s, 4),
                      "peak_mem_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 1)}
print(json.dumps(out["1.3B_shaped"]))
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "gpu_check.json"), "w"), indent=2)
