# Seed 002's gpt_v3 grid: pe_type (randn, sinpe, rope) x n_embd (384, 768) x n_head (6, 8, 12) x
# n_layer (6, 8, 12) = 54 runs of makemore-style GPTs on char-level tiny Shakespeare, context 256,
# batch 64, 5000 steps at a constant 3e-4, dropout 0.2 (config/002-gpt_v3-*.py). GPU-sized:
#   python sweep.py config/sweeps/002_pe_size.py --gpus 0,1,2,3,4,5,6,7   # -> log/sweeps/002_pe_size.md
# Data: see config/shakespeare_char.py.
NAME = "002_pe_size"
PRESET = "config/002-gpt_v3-sinpe.py"
GRID = {
    "pos_encoding": ["learned", "sinusoidal", "rope"],   # randn (a learned table), sinpe, rope
    "n_embd": [384, 768],
    "n_head": [6, 8, 12],
    "n_layer": [6, 8, 12],
}
BASE = {}
