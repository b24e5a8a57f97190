"""HF checkpoint -> F32/F16/BF16 GGUF through the pinned tree's own convert_hf_to_gguf.py.

The vendored converter is imported as a module (its `conversion` package), never edited:
one method is replaced for the duration of a conversion, `TextModel.get_vocab_base_pre`, so
that a BPE tokenizer whose hash the converter does not list is still converted (see
pretok.py), and the writer's per-tensor loop reports progress to us.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from hobbit_py._lib import REPO_ROOT, HobbitError

from . import pretok

#: outtype -> gguf.LlamaFileType member name
OUTTYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16"}


def llama_cpp_tree() -> Path:
    """The pinned llama.cpp source tree whose converter we drive."""
    tree = REPO_ROOT / "vendor" / "llama.cpp"
    if not (tree / "convert_hf_to_gguf.py").is_file() or not (tree / "conversion").is_dir():
        raise HobbitError(f"convert_hf_to_gguf.py of the pinned llama.cpp not found in {tree}; run 'make vendor'")
    return tree


def conversion_module() -> ModuleType:
    """Import the vendored `conversion` package (torch and transformers come with it)."""
    tree = llama_cpp_tree()
    for p in (str(tree), str(tree / "gguf-py")):
        if p not in sys.path:
            sys.path.append(p)
    try:
        import conversion  # noqa: PLC0415
    except ImportError as e:
        raise HobbitError(f"cannot import convert_hf_to_gguf.py's dependencies ({e}); "
                          "install torch, transformers, sentencepiece and safetensors") from None
    if not str(getattr(conversion, "__file__", "")).startswith(str(tree)):
        raise HobbitError(f"a foreign 'conversion' module shadows {tree}/conversion")
    return conversion


def supported_architectures() -> set[str]:
    """HF architecture names the pinned converter handles as text models.

    Read from the literal TEXT_MODEL_MAP in conversion/__init__.py without importing it
    (that would import torch), so bad input is refused quickly.
    """
    init = llama_cpp_tree() / "conversion" / "__init__.py"
    try:
        for node in ast.parse(init.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "TEXT_MODEL_MAP":
                return set(ast.literal_eval(node.value))  # type: ignore[arg-type]
    except (OSError, SyntaxError, ValueError):
        pass
    return set(conversion_module().TEXT_MODEL_MAP)


@contextlib.contextmanager
def _patched(warn: Callable[[str], None], log: logging.Logger) -> Iterator[None]:
    """Install the pre-tokenizer fallback on TextModel for the duration of one conversion."""
    from conversion.base import TextModel  # noqa: PLC0415

    original = TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self: Any, tokenizer: Any) -> str:
        level = log.level
        log.setLevel(logging.CRITICAL)  # the original prints a banner before it raises
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            pass
        finally:
            log.setLevel(level)
        name, why = pretok.detect(Path(self.dir_model) / "tokenizer.json")
        warn(f"convert_hf_to_gguf.py does not know this BPE tokenizer; using pre-tokenizer "
             f"'{name}' because {why}" + ("" if name != pretok.DEFAULT else
                                         "; text may split into tokens differently than in transformers"))
        return name

    TextModel.get_vocab_base_pre = get_vocab_base_pre  # type: ignore[method-assign]
    try:
        yield
    finally:
        TextModel.get_vocab_base_pre = original  # type: ignore[method-assign]


class _Counted:
    """Wraps a tensor queued in GGUFWriter so that writing it reports its bytes."""

    def __init__(self, tensor: Any, on_bytes: Callable[[int], None]) -> None:
        self._t, self._on = tensor, on_bytes

    @property
    def nbytes(self) -> int:
        return int(self._t.nbytes)

    def tofile(self, f: Any) -> None:
        self._t.tofile(f)
        self._on(int(self._t.nbytes))


@contextlib.contextmanager
def _captured_logs(verbose: bool) -> Iterator[logging.Logger]:
    """Keep the converter's INFO/WARNING chatter off the terminal unless asked for."""
    names = ("hf-to-gguf", "gguf", "gguf.gguf_writer", "gguf.vocab", "transformers")
    saved = [(logging.getLogger(n), logging.getLogger(n).level, logging.getLogger(n).propagate) for n in names]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("convert_hf_to_gguf: %(message)s"))
    for lg, _, _ in saved:
        lg.setLevel(logging.INFO if verbose else logging.CRITICAL)
        lg.propagate = False
        if verbose:
            lg.addHandler(handler)
    try:
        yield logging.getLogger("hf-to-gguf")
    finally:
        for lg, level, prop in saved:
            lg.setLevel(level)
            lg.propagate = prop
            if handler in lg.handlers:
                lg.removeHandler(handler)


def convert_hf(model_dir: Path, out: Path, outtype: str, *, warn: Callable[[str], None],
               on_total: Callable[[int], None] = lambda n: None,
               on_bytes: Callable[[int], None] = lambda n: None, verbose: bool = False) -> None:
    """Write `model_dir` as an unquantised GGUF (`outtype` f32, f16 or bf16) to `out`."""
    conversion_module()
    import gguf  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class  # noqa: PLC0415

    ftype = getattr(gguf.LlamaFileType, OUTTYPES[outtype])
    with _captured_logs(verbose) as log, _patched(warn, log), torch.inference_mode(), \
            warnings.catch_warnings():
        if not verbose:
            warnings.simplefilter("ignore")
        hparams = ModelBase.load_hparams(model_dir, False)
        arch = get_model_architecture(hparams, ModelType.TEXT)
        try:
            cls = get_model_class(arch)
        except NotImplementedError:
            raise HobbitError(f"unsupported architecture: {arch} (the pinned convert_hf_to_gguf.py "
                              "cannot convert it)") from None
        model = cls(model_dir, ftype, out)
        writer = model.gguf_writer
        original_write = writer.write_tensors_to_file

        def write_tensors_to_file(*, progress: bool = False) -> None:
            on_total(sum(ti.nbytes for shard in writer.tensors for ti in shard.values()))
            for shard in writer.tensors:
                for ti in shard.values():
                    if ti.tensor is not None:
                        ti.tensor = _Counted(ti.tensor, on_bytes)
            original_write(progress=False)

        writer.write_tensors_to_file = write_tensors_to_file
        model.write()
