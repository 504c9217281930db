# A CPU-sized version of seed 002's positional-encoding x size study (minutes on a laptop):
# 3 position encodings x 2 widths of a 2-layer char-level model, 150 steps each, on tiny
# Shakespeare. Prepare the data first (not shipped):
#   python fineweb.py --source tinyshakespeare.txt --tokenizer char --val-position last --out data/shakespeare_char_last
# then
#   python sweep.py config/sweeps/pe_size_cpu.py        # -> log/sweeps/pe_size_cpu.md
NAME = "pe_size_cpu"
PRESET = "config/shakespeare_char.py"
GRID = {
    "pos_encoding": ["learned", "sinusoidal", "rope"],   # seed 002: randn, sinpe, rope
    "n_embd": [32, 64],
    "n_head": [2],
    "n_layer": [2],
}
BASE = {
    "block_size": 64,
    "T": 64,
    "B": 16,
    "total_batch_size": 16 * 64,
    "dropout": 0.0,
    "max_steps": 150,
    "warmup_steps": 15,
    "max_lr": 3e-3,
    "min_lr": 3e-4,
    "eval_interval": 50,
    "eval_iters": 10,
    "log_interval": 1,
    "sample_interval": 0,
    "checkpoint_interval": 150,
    "compile": False,
    "device": "cpu",
}
