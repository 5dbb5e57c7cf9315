"""A tiny Gemma 3 vision projector (mmproj GGUF) with random weights, for tests.

A real projector is 850 MB; this one has the same layout as `mmproj-model-f16-*.gguf` (the keys
and `v.*`/`mm.*` tensors llama.cpp's clip.cpp reads for projector type `gemma3`: a SigLIP vision
tower, average pooling, an RMS norm and the input projection into the text model's embedding
width) at a few hundred KB, so the whole image path runs on the CPU in about a second. Its
answers are noise, but a deterministic function of the image: what tests can assert.

The geometry keeps what the engine depends on: 256 image positions per image, like Gemma 3
(64 x 64 pixels in 4 x 4 patches = 16 x 16 patches, pooled by a factor of 1), and an output width
equal to the text model's (640 for the bundled 270M).
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

TEXT_EMBEDDING_WIDTH = 640  # gemma3.embedding_length of the bundled 270M
IMAGE_SIZE = 64
PATCH_SIZE = 4
POOL = 1  # clip.vision.projector.scale_factor (real Gemma 3: 4, from 64 x 64 patches)
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE // POOL) ** 2  # 256, as for real Gemma 3
WIDTH = 32  # the vision tower's embedding width
FEED_FORWARD = 64
BLOCKS = 2
HEADS = 2


def write_tiny_projector(
    path: Path, *, text_width: int = TEXT_EMBEDDING_WIDTH, seed: int = 0
) -> Path:
    """Write the projector to `path` (deterministic for a seed) and return the path."""
    rng = np.random.default_rng(seed)

    def matrix(rows: int, cols: int) -> np.ndarray:
        # 1/sqrt(fan-in) keeps activations near unit size through the random layers.
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float16)

    def vector(n: int, mean: float = 0.0, scale: float = 0.02) -> np.ndarray:
        return (mean + scale * rng.standard_normal(n)).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_string("general.name", "tiny test gemma3 projector")
    writer.add_string("clip.projector_type", "gemma3")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.has_audio_encoder", False)
    writer.add_bool("clip.use_gelu", True)
    writer.add_uint32("clip.vision.image_size", IMAGE_SIZE)
    writer.add_uint32("clip.vision.patch_size", PATCH_SIZE)
    writer.add_uint32("clip.vision.embedding_length", WIDTH)
    writer.add_uint32("clip.vision.feed_forward_length", FEED_FORWARD)
    writer.add_uint32("clip.vision.block_count", BLOCKS)
    writer.add_uint32("clip.vision.attention.head_count", HEADS)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    writer.add_uint32("clip.vision.projection_dim", text_width)
    writer.add_uint32("clip.vision.projector.scale_factor", POOL)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

    patches = (IMAGE_SIZE // PATCH_SIZE) ** 2
    # numpy shapes are ggml's dimensions reversed.
    kernel = rng.standard_normal((WIDTH, 3, PATCH_SIZE, PATCH_SIZE)) / np.sqrt(3 * PATCH_SIZE**2)
    writer.add_tensor("v.patch_embd.weight", kernel.astype(np.float16))
    writer.add_tensor("v.patch_embd.bias", vector(WIDTH))
    writer.add_tensor("v.position_embd.weight", vector(patches * WIDTH).reshape(patches, WIDTH))
    for block in range(BLOCKS):
        prefix = f"v.blk.{block}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            writer.add_tensor(f"{prefix}.{name}.weight", matrix(WIDTH, WIDTH))
            writer.add_tensor(f"{prefix}.{name}.bias", vector(WIDTH))
        for name in ("ln1", "ln2"):
            writer.add_tensor(f"{prefix}.{name}.weight", vector(WIDTH, mean=1.0))
            writer.add_tensor(f"{prefix}.{name}.bias", vector(WIDTH))
        writer.add_tensor(f"{prefix}.ffn_up.weight", matrix(FEED_FORWARD, WIDTH))
        writer.add_tensor(f"{prefix}.ffn_up.bias", vector(FEED_FORWARD))
        writer.add_tensor(f"{prefix}.ffn_down.weight", matrix(WIDTH, FEED_FORWARD))
        writer.add_tensor(f"{prefix}.ffn_down.bias", vector(WIDTH))
    writer.add_tensor("v.post_ln.weight", vector(WIDTH, mean=1.0))
    writer.add_tensor("v.post_ln.bias", vector(WIDTH))
    writer.add_tensor("mm.soft_emb_norm.weight", vector(WIDTH, mean=1.0))
    # ggml (text_width, WIDTH): clip.cpp transposes it to map WIDTH -> text_width.
    projection = rng.standard_normal((WIDTH, text_width)) / np.sqrt(WIDTH)
    writer.add_tensor("mm.input_projection.weight", projection.astype(np.float16))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
