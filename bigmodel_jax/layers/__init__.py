"""The layers every family builds from, each axis logically named:
`linear` (projections with LoRA), `attention` (self or cross, masks, GQA,
KV cache, bias hook), `mlp` (GELU or SwiGLU) and `norm` (LayerNorm or
RMSNorm). Families differ only in how they arrange them."""
