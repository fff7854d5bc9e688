"""Writes a randomly initialised Llama-family HF model (config, bf16 safetensors, tokenizer)
for memory and speed benchmarks: shapes of real models without downloading one.

    make_random_llama.py --shape llama-3.2-1b --tokenizer-gguf models/SmolLM2-...gguf --out DIR

The tokenizer is the default model's (read from its GGUF by transformers), so the vocabulary
is 49152 and ft's data pipeline runs unchanged.
"""
import argparse
import os

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

SHAPES = {
    # Llama-3.2-1B's blocks (16 layers, 2048 wide, GQA 32/8, MLP 8192), SmolLM2's vocabulary.
    "llama-3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=True,
    ),
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    ),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--tokenizer-gguf", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    directory, name = os.path.split(os.path.abspath(args.tokenizer_gguf))
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **SHAPES[args.shape],
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    print(f"wrote {args.out}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters")


if __name__ == "__main__":
    main()
