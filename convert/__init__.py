"""hobbit_convert: MoE checkpoints (HF or GGUF) -> multi-precision GGUF for HOBBIT.

Entry points: `convert.convert()` (library), `cli.register(app)` (the typer commands) and
`info.read_info()`.
"""
