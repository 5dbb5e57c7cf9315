"""A tiny EmbeddingGemma (GGUF architecture `gemma-embedding`) with random weights, for tests.

The real EmbeddingGemma 300M is 300-600 MB and cannot be downloaded in tests; this one has its
layout (the keys and tensors llama.cpp's `gemma-embedding` loader reads: a bidirectional Gemma 3
stack, mean pooling, then the two dense projections `dense_2` and `dense_3` into the output
width) at about 20 MB, and the bundled 270M's own tokenizer (same 262144-token vocabulary as the
real model), so tokenisation, context limits and vocabulary checks are real. Its vectors are
noise, but a deterministic function of the input: what tests can assert.

The width is 256 (real: 768) so that the token embeddings stay small (Q8_0, 70 MB for the
262144-token vocabulary); Matryoshka truncation to 128 is exercised, 512 is wider than the model.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

ARCH = "gemma-embedding"
WIDTH = 256  # the hidden and output width (real: 768; llama.cpp wants dense_3's out == it)
FEED_FORWARD = 64
BLOCKS = 6  # llama.cpp: layer 5 is global, 0-4 sliding (both attention masks are used)
HEADS = 2
HEADS_KV = 1
HEAD_DIM = 16
DENSE_INNER = 64  # dense_2's output (real: 3072)
CONTEXT = 2048  # as the real model's
TOKENIZER_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.ggml.add_space_prefix",
)


def _copy_tokenizer(writer: gguf.GGUFWriter, reader: gguf.GGUFReader) -> int:
    """Copy the tokenizer's keys (reading the 270M's takes ~20 s: once) and return the vocabulary
    size."""
    for key in TOKENIZER_KEYS:
        field = reader.fields[key]
        kind = field.types[0]
        value = field.contents()
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_array(key, value)
        else:
            writer.add_key_value(key, value, kind)
    return len(reader.fields["tokenizer.ggml.tokens"].data)


def write_tiny_embedding_model(path: Path, tokenizer_source: Path, *, seed: int = 0) -> Path:
    """Write the model to `path` (deterministic for a seed), with the tokenizer of the GGUF at
    `tokenizer_source` (the bundled 270M), and return the path."""
    rng = np.random.default_rng(seed)

    def matrix(rows: int, cols: int) -> np.ndarray:
        # numpy shapes are ggml's dimensions reversed: (rows=out, cols=in).
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float16)

    def norm(n: int) -> np.ndarray:
        return (0.02 * rng.standard_normal(n)).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), ARCH)
    writer.add_string("general.name", "tiny test embeddinggemma")
    writer.add_uint32(f"{ARCH}.context_length", CONTEXT)
    writer.add_uint32(f"{ARCH}.embedding_length", WIDTH)
    writer.add_uint32(f"{ARCH}.block_count", BLOCKS)
    writer.add_uint32(f"{ARCH}.feed_forward_length", FEED_FORWARD)
    writer.add_uint32(f"{ARCH}.attention.head_count", HEADS)
    writer.add_uint32(f"{ARCH}.attention.head_count_kv", HEADS_KV)
    writer.add_uint32(f"{ARCH}.attention.key_length", HEAD_DIM)
    writer.add_uint32(f"{ARCH}.attention.value_length", HEAD_DIM)
    writer.add_float32(f"{ARCH}.attention.layer_norm_rms_epsilon", 1e-6)
    writer.add_float32(f"{ARCH}.rope.freq_base", 1_000_000.0)
    writer.add_uint32(f"{ARCH}.attention.sliding_window", 256)
    writer.add_bool(f"{ARCH}.attention.causal", False)
    writer.add_uint32(f"{ARCH}.pooling_type", int(gguf.PoolingType.MEAN))
    writer.add_dense_features_dims("dense_2", WIDTH, DENSE_INNER)
    writer.add_dense_features_dims("dense_3", DENSE_INNER, WIDTH)
    vocab = _copy_tokenizer(writer, gguf.GGUFReader(str(tokenizer_source)))
    # Q8_0: the vocabulary x width table is most of the file.
    table = rng.standard_normal((vocab, WIDTH), dtype=np.float32)
    quantized = gguf.quants.quantize(table, gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("token_embd.weight", quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    for block in range(BLOCKS):
        prefix = f"blk.{block}"
        writer.add_tensor(f"{prefix}.attn_q.weight", matrix(HEADS * HEAD_DIM, WIDTH))
        writer.add_tensor(f"{prefix}.attn_k.weight", matrix(HEADS_KV * HEAD_DIM, WIDTH))
        writer.add_tensor(f"{prefix}.attn_v.weight", matrix(HEADS_KV * HEAD_DIM, WIDTH))
        writer.add_tensor(f"{prefix}.attn_output.weight", matrix(WIDTH, HEADS * HEAD_DIM))
        writer.add_tensor(f"{prefix}.attn_q_norm.weight", norm(HEAD_DIM))
        writer.add_tensor(f"{prefix}.attn_k_norm.weight", norm(HEAD_DIM))
        for name in ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"):
            writer.add_tensor(f"{prefix}.{name}.weight", norm(WIDTH))
        writer.add_tensor(f"{prefix}.ffn_gate.weight", matrix(FEED_FORWARD, WIDTH))
        writer.add_tensor(f"{prefix}.ffn_up.weight", matrix(FEED_FORWARD, WIDTH))
        writer.add_tensor(f"{prefix}.ffn_down.weight", matrix(WIDTH, FEED_FORWARD))
    writer.add_tensor("output_norm.weight", norm(WIDTH))
    writer.add_tensor("dense_2.weight", matrix(DENSE_INNER, WIDTH))
    writer.add_tensor("dense_3.weight", matrix(WIDTH, DENSE_INNER))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
