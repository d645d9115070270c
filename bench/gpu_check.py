"""GPU check: a Falcon-7B-shaped model (random init, no download) through LoRA, QLoRA and frozen-phase steps.

    python bench/gpu_check.py                       # on a CUDA machine: bf16, Falcon-7B dimensions
    python bench/gpu_check.py --tiny --device cpu   # a smoke run of the same code on a CPU box

Prints tokens/s, model FLOPs utilisation (MFU) and peak GPU memory for each mode. FLOPs per token follow the
usual dense-transformer count (Kaplan et al.; PaLM appendix B) with N the backbone parameters, L layers, T tokens:
  LoRA / QLoRA step  4N + 12·L·H·T   (forward 2N, backward through the frozen weights 2N; no weight gradients)
  frozen forward     2N + 4·L·H·T
MFU = achieved FLOP/s ÷ the card's dense bf16 peak (H100 SXM 989 TFLOP/s, H200 989, A100 312; --peak to set).
Gradient checkpointing recomputes the forward; MFU does not count that recompute (it is model FLOPs), so `lora_ckpt`
trades MFU for memory. `lora_shared` / `lora_ckpt_shared` (not in the default modes) run the same batch as rows that
share prompts (`--answers` rows per prompt, `--answer-tokens` each): tokens/s counts the rows' tokens, as the plain
modes do, and MFU the tokens actually run. On CUDA the script also times an 8192³ bf16 matmul: the ceiling this card reaches in practice.
Results are written to --out after every mode, so a run cut short still reports what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import FalconConfig, FalconForCausalLM

from autocritic.model.backbone import LoraSettings, apply_lora, freeze
from autocritic.model.critic import CriticModel
from autocritic.model.falcon_attention import use_fused_attention

PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12}


def falcon_7b_config(tiny: bool) -> FalconConfig:
    if tiny:
        return FalconConfig(
            vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, alibi=False
        )
    # tiiuae/falcon-7b: hidden 4544, 32 layers, 71 heads, multi-query attention, parallel attention + MLP.
    return FalconConfig(
        vocab_size=65024,
        hidden_size=4544,
        num_hidden_layers=32,
        num_attention_heads=71,
        multi_query=True,
        parallel_attn=True,
        new_decoder_architecture=False,
        alibi=False,
        bias=False,
    )


def peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAKS.items() if k in name), None)


def matmul_params(cfg: FalconConfig) -> int:
    """Parameters the critic's forward multiplies by: the decoder without the embedding lookup (no lm_head runs)."""
    with torch.device("meta"):
        decoder = FalconForCausalLM(cfg).transformer
    return sum(p.numel() for name, p in decoder.named_parameters() if not name.startswith("word_embeddings"))


def matmul_tflops(device: torch.device) -> float | None:
    """The bf16 matmul rate this card reaches on random data: the practical ceiling beside the datasheet peak."""
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return round(2 * 8192**3 * 10 / (time.perf_counter() - start) / 1e12, 1)


def time_steps(step, steps: int, device: torch.device) -> float:
    step()  # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def measure(mode: str, critic: torch.nn.Module, cfg: FalconConfig, args, device: torch.device) -> dict:
    batch, seq = args.batch, args.seq
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    mask = torch.ones_like(ids)
    n = matmul_params(cfg)
    attn = cfg.num_hidden_layers * cfg.hidden_size * seq
    if mode.endswith("_shared"):  # the same rows as prompts shared by --answers rows, each prompt run once
        answer = args.answer_tokens
        prompts = batch // args.answers
        prefix = torch.randint(0, cfg.vocab_size, (prompts, seq - answer), device=device)
        answers = torch.randint(0, cfg.vocab_size, (batch, answer), device=device)
        repeat = torch.arange(batch, device=device) // args.answers
        params = [p for p in critic.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)

        def step():
            ones = torch.ones_like(answers)
            out = critic.forward_shared(prefix, torch.ones_like(prefix), answers, ones, repeat, ones.bool())
            out.score.float().pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        run_tokens = prompts * (seq - answer) + batch * answer
        flops_per_token = (4 * n + 12 * attn) * run_tokens / (batch * seq)  # model FLOPs of the tokens run
    elif mode == "frozen":
        critic.eval()

        @torch.no_grad()
        def step():
            critic(input_ids=ids, attention_mask=mask)

        flops_per_token = 2 * n + 4 * attn
    else:
        params = [p for p in critic.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)

        def step():
            out = critic(input_ids=ids, attention_mask=mask)
            out.score.float().pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        flops_per_token = 4 * n + 12 * attn
    seconds = time_steps(step, args.steps, device)
    tokens_per_s = batch * seq / seconds
    peak = peak_flops(device, args.peak)
    return {
        "mode": mode,
        "tokens_per_s": round(tokens_per_s, 1),
        "step_s": round(seconds, 4),
        "mfu": round(tokens_per_s * flops_per_token / peak, 4) if peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda"
        else None,
        "backbone_params": n,
        "batch": batch,
        "seq": seq,
    }


def build(
    cfg: FalconConfig, dtype: torch.dtype, device: torch.device, quantize: str | None, work: Path, fused: bool
):
    backbone = build_backbone(cfg, dtype, device, quantize, work)
    if fused:
        use_fused_attention(backbone)
    return backbone


def build_backbone(
    cfg: FalconConfig, dtype: torch.dtype, device: torch.device, quantize: str | None, work: Path
):
    if quantize is None:
        with torch.device(device):
            backbone = FalconForCausalLM(cfg).to(dtype)
        return backbone
    from autocritic.model.quantization import QuantizationSettings, load_causal_lm, prepare_for_kbit_training

    directory = work / "falcon"
    if not directory.exists():
        with torch.device(device):  # random init on the GPU: seconds, where a CPU needs minutes for 7B
            FalconForCausalLM(cfg).to(dtype).save_pretrained(directory)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    settings = QuantizationSettings(
        mode=quantize, compute_dtype="bfloat16" if dtype == torch.bfloat16 else "float32"
    )
    backbone = load_causal_lm(str(directory), settings, dtype=dtype, device_map={"": device})
    prepare_for_kbit_training(backbone, gradient_checkpointing=True)
    return backbone


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny dimensions (smoke test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--peak", type=float, default=None, help="peak FLOP/s of the device")
    parser.add_argument("--modes", default="frozen,lora,lora_ckpt,qlora")
    parser.add_argument("--answers", type=int, default=4, help="*_shared modes: rows per prompt")
    parser.add_argument("--answer-tokens", type=int, default=64, help="*_shared modes: tokens per answer")
    parser.add_argument(
        "--attention",
        default="fused",
        choices=["fused", "native"],
        help="fused: what load_backbone installs (multi-query K/V broadcast for SDPA); native: transformers' own",
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = falcon_7b_config(args.tiny)
    summary = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "config": "tiny" if args.tiny else "falcon-7b",
        "attention": args.attention,
        "peak_tflops": (peak_flops(device, args.peak) or 0) / 1e12 or None,
        "matmul_tflops_measured": matmul_tflops(device),
        "results": [],
    }
    results = summary["results"]
    ram = (
        "/dev/shm" if os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free > 20 * 2**30 else None
    )
    with tempfile.TemporaryDirectory(dir=ram) as work:
        for mode in args.modes.split(","):
            backbone = build(
                cfg, dtype, device, "nf4" if mode == "qlora" else None, Path(work), args.attention == "fused"
            )
            critic = CriticModel(backbone).to(device)
            if mode == "frozen":
                freeze(critic.backbone)
            else:
                if mode.startswith("lora"):
                    freeze(critic.backbone)
                if mode.startswith("lora_ckpt"):
                    critic.backbone.gradient_checkpointing_enable(
                        gradient_checkpointing_kwargs={"use_reentrant": False}
                    )
                critic.backbone.train()
                critic = apply_lora(
                    critic, LoraSettings(r=16, alpha=32, target_modules=["query_key_value", "dense"])
                )
            results.append(measure(mode, critic, cfg, args, device))
            if summary["matmul_tflops_measured"] and results[-1]["mfu"]:
                achieved = results[-1]["mfu"] * summary["peak_tflops"]
                results[-1]["fraction_of_measured_matmul"] = round(
                    achieved / summary["matmul_tflops_measured"], 4
                )
            print(json.dumps(results[-1]), flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(summary, indent=2))
            del critic, backbone
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
