"""Build the training corpus, the tokenizer and the token files from Debian documentation packages.

Steps (all reproducible from Debian's archive, `apt-get download` + `dpkg-deb -x`):
1. fetch the packages in SOURCES (pinned versions, falling back to the current candidate);
2. turn each document (reST, HTML, POD, AsciiDoc, plain text) into prose paragraphs,
   dropping code blocks, tables, markup and code-like paragraphs;
3. split by whole documents into train / val (early stopping) / held-out (reported);
4. train a byte-level BPE tokenizer on the train split;
5. write uint16 token files (each document as <s> tokens </s>) for train.py.

Outputs: data/heldout.txt (committed), data/work/ (ignored: packages, corpus, tokens, tokenizer).

    python -m training.prepare_data [--vocab 4096]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import json
import re
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
WORK = DATA / "work"


@dataclass(frozen=True)
class Source:
    package: str
    version: str  # pinned; the current candidate is used (with a warning) if it is gone
    licence: str
    globs: tuple[str, ...]  # under the extracted tree
    fmt: str  # rst | html | pod | asciidoc | text
    exclude: tuple[str, ...] = ()


SOURCES: tuple[Source, ...] = (
    Source("python3.11-doc", "3.11.2-6+deb12u9", "PSF-2.0 (Python Software Foundation License v2)",
           ("usr/share/doc/python3.11/html/_sources/**/*.rst.txt",), "rst",
           ("whatsnew/changelog", "_sources/license")),
    Source("postgresql-doc-15", "15.20-0+deb12u1", "PostgreSQL Licence (BSD-style)",
           ("usr/share/doc/postgresql-doc-15/html/*.html",), "html", ("release-", "bookindex", "sql-keywords")),
    Source("perl-doc", "5.36.0-7+deb12u4", "Artistic-1.0 or GPL-1+ (Perl's licence)",
           ("usr/share/perl/5.36.0/pod/*.pod",), "pod", ("delta.pod", "perltoc", "perlapi", "perlintern")),
    Source("git-doc", "1:2.39.5-0+deb12u3", "GPL-2.0",
           ("usr/share/doc/git-doc/*.txt", "usr/share/doc/git-doc/howto/*.txt",
            "usr/share/doc/git-doc/technical/*.txt"), "asciidoc", ("cmds-", "-list.txt", "fsck-msgids")),
    Source("sqlite3-doc", "3.40.1-2+deb12u2", "public domain (SQLite documentation)",
           ("usr/share/doc/sqlite3/*.html", "usr/share/doc/sqlite3/*/*.html"), "html",
           ("requirements", "releaselog", "search", "crossref", "changes", "syntax", "c3ref/", "/matrix/",
            "sqlite3/doc_", "sqlite3/toc", "keyword_index", "sitemap", "chronology", "fileio", "mingw")),
    Source("debian-reference-en", "2.100", "GPL-2.0+",
           ("usr/share/debian-reference/*.en.html",), "html"),
    Source("jargon-text", "4.4.7-4.1", "public domain (the Jargon File 4.4.7)",
           ("usr/share/doc/jargon-text/jargon.txt.gz",), "text"),
)

# ----------------------------------------------------------------------------- fetch


def fetch(src: Source, dest: Path) -> tuple[Path, str]:
    """Download one .deb into dest (pinned version first) and return (path, version)."""
    dest.mkdir(parents=True, exist_ok=True)
    have = sorted(dest.glob(f"{src.package}_*.deb"))
    if not have:
        for spec in (f"{src.package}={src.version}", src.package):
            r = subprocess.run(["apt-get", "download", spec], cwd=dest, capture_output=True, text=True)
            if r.returncode == 0:
                break
            print(f"  apt-get download {spec} failed: {r.stderr.strip().splitlines()[-1:]}")
        else:
            raise SystemExit(f"cannot download {src.package}; run `apt-get update` first")
        have = sorted(dest.glob(f"{src.package}_*.deb"))
    deb = have[-1]
    version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    if version != src.version:
        print(f"  WARNING: {src.package} {version} differs from the pinned {src.version}")
    return deb, version


def extract(deb: Path, dest: Path) -> Path:
    out = dest / deb.stem
    if not out.exists():
        out.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(out)], check=True)
    return out


# ----------------------------------------------------------------------------- cleaning helpers

_WS = re.compile(r"\s+")
_CODEY = set("{}[]();=<>$@%\\|#_/")


def paragraphs(lines: list[str]) -> Iterator[str]:
    """Join runs of non-blank lines into one-line paragraphs."""
    buf: list[str] = []
    for ln in lines + [""]:
        if ln.strip():
            buf.append(ln.strip())
        elif buf:
            yield _WS.sub(" ", " ".join(buf)).strip()
            buf = []


def is_prose(p: str) -> bool:
    """Keep sentences, drop headings, code and tables."""
    words = p.split()
    if len(words) < 5 or len(p) < 30:
        return False
    letters = sum(c.isalpha() or c.isspace() for c in p)
    if letters / len(p) < 0.82:
        return False
    if sum(c in _CODEY for c in p) / len(p) > 0.04:
        return False
    return any(c in p for c in ".:;?!")


def finish(paras: Iterator[str]) -> str:
    return "\n\n".join(p for p in paras if is_prose(p))


# ----------------------------------------------------------------------------- reST

_RST_KEEP_BODY = re.compile(
    r"^(note|warning|seealso|versionadded|versionchanged|deprecated|deprecated-removed|important|tip|"
    r"attention|caution|hint|danger|impl-detail|topic|rubric|admonition|"
    r"(py:|c:)?(function|method|class|attribute|data|exception|decorator|decoratormethod|classmethod|"
    r"staticmethod|abstractmethod|coroutinefunction|coroutinemethod|module|describe|option|cmdoption|"
    r"envvar|type|macro|member|var|opcode|pdbcommand|2to3fixer|audit-event|availability|"
    r"glossary|only|container|tabularcolumns))$")
_ROLE = re.compile(r":[\w:.+-]+:`([^`]*)`")
_LINK = re.compile(r"`([^`<]*?)\s*<[^`>]*>`__?")


def _role(m: re.Match[str]) -> str:
    t = m.group(1)
    t = re.sub(r"\s*<[^>]*>$", "", t).lstrip("!")
    if t.startswith("~"):
        t = t[1:].split(".")[-1]
    return t


def rst_inline(s: str) -> str:
    s = _ROLE.sub(_role, s)
    s = _LINK.sub(r"\1", s)
    s = re.sub(r"``(.+?)``", r"\1", s)
    s = re.sub(r"`([^`]+)`_{0,2}", r"\1", s)
    s = re.sub(r"\*\*(.+?)\*\*", r"\1", s)
    s = re.sub(r"(?<![\w*])\*(\S.*?)\*(?![\w*])", r"\1", s)
    s = re.sub(r"\|(\w[\w -]*)\|", r"\1", s)
    s = re.sub(r"\[#?\w*\]_", "", s)
    return s.replace("\\", "")


def clean_rst(text: str) -> str:
    out: list[str] = []
    skip_at: int | None = None  # drop lines indented deeper than this
    lines = text.splitlines()
    for raw in lines:
        ln = raw.expandtabs(4).rstrip()
        ind = len(ln) - len(ln.lstrip())
        if skip_at is not None:
            if not ln.strip() or ind > skip_at:
                continue
            skip_at = None
        s = ln.strip()
        if not s:
            out.append("")
            continue
        if s.startswith(".."):
            m = re.match(r"\.\.\s+([\w:-]+)::", s)
            if m and _RST_KEEP_BODY.match(m.group(1)):
                out.append("")
                continue  # drop the directive line, keep its indented body
            skip_at = ind  # comment, target or code/table/index directive: drop it all
            out.append("")
            continue
        if re.fullmatch(r"([=\-~^\"'`#*+:.<>_])\1{2,}", s):  # section underline / overline
            if out and out[-1].strip():
                out[-1] = ""
            continue
        if s.startswith((">>>", "... ", "+-", "|", "$ ", "% ")) or re.fullmatch(r"[=\s]+", s):
            continue
        if s.startswith(":") and re.match(r":[\w -]+:(\s|$)", s):  # field list / directive option
            s = re.sub(r"^:[\w -]+:\s*", "", s)
        s = re.sub(r"^([*\-+•]|#\.|\d+\.|\(\w\))\s+", "", s)
        if not s:
            continue
        if s.endswith("::"):
            skip_at = ind
            s = s[:-2].rstrip()
            s = s + ":" if s and not s.endswith(":") else s
            out.extend([rst_inline(s), ""])
            continue
        out.append(rst_inline(s))
    return finish(paragraphs(out))


# ----------------------------------------------------------------------------- HTML


class _HTMLText(HTMLParser):
    SKIP = {"pre", "script", "style", "table", "head", "code", "kbd", "samp", "svg", "object"}
    SKIP_CLASS = ("navheader", "navfooter", "toc", "synopsis", "refsynopsisdiv", "footnotes", "screen",
                  "programlisting", "literallayout", "funcsynopsis", "cmdsynopsis")
    BLOCK = {"p", "li", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6", "div", "br", "blockquote", "tr",
             "ul", "ol", "dl", "section", "title"}
    VOID = {"br", "img", "hr", "meta", "link", "input", "col", "area", "base", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool]] = []
        self.skip = 0
        self.lines: list[str] = [""]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.BLOCK:
            self.lines.append("")
        if tag in self.VOID:
            return
        cls = dict(attrs).get("class") or ""
        skipping = tag in self.SKIP or any(c in cls.split() for c in self.SKIP_CLASS)
        if tag in ("code", "kbd", "samp") and not self.skip:
            skipping = False  # inline code inside prose: keep the words
        self.stack.append((tag, skipping))
        self.skip += skipping

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        while self.stack:
            t, sk = self.stack.pop()
            self.skip -= sk
            if t == tag:
                break
        if tag in self.BLOCK:
            self.lines.append("")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.lines[-1] += data.replace("\n", " ")


def clean_html(text: str) -> str:
    p = _HTMLText()
    p.feed(text)
    return finish(paragraphs([html.unescape(x) for x in p.lines]))


# ----------------------------------------------------------------------------- POD

_POD_ESC = {"gt": ">", "lt": "<", "verbar": "|", "sol": "/", "quot": '"', "amp": "&", "apos": "'"}


def _pod_code(m: re.Match[str]) -> str:
    code, inner = m.group(1), m.group(2)
    if code in "XZ":
        return ""
    if code == "E":
        return _POD_ESC.get(inner, html.unescape(f"&{inner};") if not inner.isdigit() else chr(int(inner)))
    if code == "L":
        inner = inner.split("|")[0] if "|" in inner else inner
        return inner.replace('"', "").replace("/", " ")
    return inner


def pod_inline(s: str) -> str:
    s = re.sub(r"([A-Z])<{2,}\s+(.*?)\s+>{2,}", lambda m: _pod_code(m), s)
    prev = None
    while prev != s:
        prev, s = s, re.sub(r"([A-Z])<([^<>]*)>", _pod_code, s)
    return s


def clean_pod(text: str) -> str:
    out: list[str] = []
    skip_block = False
    for para in re.split(r"\n\s*\n", text):
        if not para.strip():
            continue
        if para.startswith("=begin"):
            skip_block = True
        if skip_block:
            skip_block = not para.startswith("=end")
            continue
        if para.startswith("=") or para[0] in " \t":  # commands (headings, items) and verbatim code
            continue
        out.append(pod_inline(_WS.sub(" ", para)))
    return finish(iter(out))


# ----------------------------------------------------------------------------- AsciiDoc


def asciidoc_inline(s: str) -> str:
    s = re.sub(r"linkgit:([\w.-]+)\[\d\]", r"\1", s)
    s = re.sub(r"(link|https?|mailto):\S*?\[([^\]]*)\]", r"\2", s)
    s = re.sub(r"<<[^,>]*,?([^>]*)>>", r"\1", s)
    s = re.sub(r"`([^`]*)`", r"\1", s)
    s = re.sub(r"(?<![\w'])'([^'\s][^']*?)'(?![\w'])", r"\1", s)
    s = re.sub(r"(?<![\w+])\+([^+]+)\+(?![\w+])", r"\1", s)
    s = re.sub(r"\{[\w-]+\}", "", s)
    return s.replace("\\", "")


def clean_asciidoc(text: str) -> str:
    out: list[str] = []
    delim: str | None = None
    literal = skip_para = False
    prev = ""
    for raw in text.splitlines():
        ln = raw.rstrip()
        s = ln.strip()
        if delim is not None:
            if s == delim:
                delim = None
            continue
        if re.fullmatch(r"(-|\.|\+|/){4,}", s) and not (prev.strip() and abs(len(prev) - len(s)) <= 2):
            delim = s
            continue
        if re.fullmatch(r"([=\-~^+])\1{2,}", s):  # title underline
            if out:
                out[-1] = ""
            prev = ln
            continue
        if not s:
            out.append("")
            literal = skip_para = False
            prev = ln
            continue
        if literal or skip_para:
            continue
        if ln[0] in " \t" and (not prev.strip()):
            literal = True  # indented literal paragraph
            continue
        if s in ("[verse]", "[synopsis]") or s.startswith("[source"):
            skip_para = True
            continue
        if re.match(r"^(\[.*\]|include::|ifdef::|ifndef::|endif::|:[\w-]+:|//)", s) or re.fullmatch(r"[=*_]{4,}", s):
            continue
        if s.endswith("::") or s.endswith(";;"):  # labelled-list term
            out.append("")
            prev = ln
            continue
        s = re.sub(r"^(=+\s.*|\.\w.*)$", "", s)  # one-line titles
        s = re.sub(r"^([*\-]+|\d+\.|[a-z]\.)\s+", "", s)
        out.append(asciidoc_inline(s))
        prev = ln
    return finish(paragraphs(out))


def clean_text(text: str) -> str:
    return finish(paragraphs([ln for ln in text.splitlines()]))


CLEANERS: dict[str, Callable[[str], str]] = {
    "rst": clean_rst, "html": clean_html, "pod": clean_pod, "asciidoc": clean_asciidoc, "text": clean_text,
}


# ----------------------------------------------------------------------------- corpus


def read(path: Path) -> str:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return raw.decode("utf-8", errors="replace")


def split_big(name: str, text: str, max_chars: int = 60_000) -> Iterator[tuple[str, str]]:
    """Cut very long documents (the Jargon File) into parts at paragraph boundaries."""
    if len(text) <= max_chars:
        yield name, text
        return
    part, size, k = [], 0, 0
    for p in text.split("\n\n"):
        part.append(p)
        size += len(p) + 2
        if size >= max_chars:
            yield f"{name}#{k}", "\n\n".join(part)
            part, size, k = [], 0, k + 1
    if part:
        yield f"{name}#{k}", "\n\n".join(part)


def build_corpus(work: Path) -> tuple[list[tuple[str, str]], dict[str, dict[str, str | int]]]:
    docs: list[tuple[str, str]] = []
    manifest: dict[str, dict[str, str | int]] = {}
    for src in SOURCES:
        deb, version = fetch(src, work / "debs")
        root = extract(deb, work / "extracted")
        files = sorted({p for g in src.globs for p in root.glob(g)})
        files = [f for f in files if not any(x in str(f) for x in src.exclude)]
        n_chars = 0
        for f in files:
            text = CLEANERS[src.fmt](read(f))
            if len(text) < 500:
                continue
            name = f"{src.package}:{f.relative_to(root)}"
            for nm, part in split_big(name, text):
                docs.append((nm, part))
                n_chars += len(part)
        manifest[src.package] = {"version": version, "licence": src.licence, "files": len(files),
                                 "chars": n_chars, "sha256": hashlib.sha256(deb.read_bytes()).hexdigest()}
        print(f"{src.package} {version}: {len(files)} files -> {n_chars / 1e6:.2f} M chars")
    return docs, manifest


def split_docs(docs: list[tuple[str, str]], target: int = 150_000) -> tuple[list[int], list[int], list[int]]:
    """Whole-document split: val and held-out take mid-sized documents in hash order."""
    order = sorted(range(len(docs)), key=lambda i: hashlib.sha1(docs[i][0].encode()).hexdigest())
    val: list[int] = []
    held: list[int] = []
    for i in order:
        n = len(docs[i][1])
        if not 3_000 <= n <= 25_000:
            continue
        if sum(len(docs[j][1]) for j in held) < target:
            held.append(i)
        elif sum(len(docs[j][1]) for j in val) < target:
            val.append(i)
        else:
            break
    taken = set(val) | set(held)
    train = [i for i in range(len(docs)) if i not in taken]
    return train, val, held


# ----------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str], vocab: int, out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    assert tok.token_to_id("<s>") == 1 and tok.token_to_id("</s>") == 2
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   add_bos_token=True, add_eos_token=False, model_max_length=2048,
                                   clean_up_tokenization_spaces=False)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())  # portable across transformers 4.x/5.x and llama.cpp's converter
    cfg.update(tokenizer_class="PreTrainedTokenizerFast", add_bos_token=True, add_eos_token=False)
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    stm = out / "special_tokens_map.json"
    if not stm.exists():
        stm.write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2) + "\n")


def encode(texts: list[str], tok_dir: Path) -> np.ndarray:
    """Each document as <s> tokens </s>, concatenated, as uint16."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids)  # the post-processor puts <s> first
        ids.append(2)
    arr = np.asarray(ids, dtype=np.uint16)
    assert arr.max() < 65536
    return arr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--heldout-chars", type=int, default=150_000)
    args = ap.parse_args()

    WORK.mkdir(parents=True, exist_ok=True)
    docs, manifest = build_corpus(WORK)
    train, val, held = split_docs(docs, args.heldout_chars)
    texts = {k: [docs[i][1] for i in idx] for k, idx in (("train", train), ("val", val), ("heldout", held))}
    (DATA / "heldout.txt").write_text("\n\n".join(texts["heldout"]) + "\n")
    (WORK / "val.txt").write_text("\n\n".join(texts["val"]) + "\n")
    (WORK / "train.txt").write_text("\n\n".join(texts["train"]) + "\n")
    (DATA / "heldout_docs.txt").write_text("\n".join(docs[i][0] for i in held) + "\n")

    tok_dir = WORK / "tokens" / "tokenizer"
    train_tokenizer(texts["train"], args.vocab, tok_dir)
    stats: dict[str, object] = {"sources": manifest, "vocab": args.vocab}
    for k, t in texts.items():
        arr = encode(t, tok_dir)
        arr.tofile(WORK / "tokens" / f"{k}.u16")
        chars = sum(len(x) for x in t)
        stats[k] = {"docs": len(t), "chars": chars, "bytes": sum(len(x.encode()) for x in t), "tokens": int(arr.size)}
        print(f"{k}: {len(t)} docs, {chars / 1e6:.2f} M chars, {arr.size / 1e6:.2f} M tokens")
    (WORK / "tokens" / "meta.json").write_text(json.dumps(stats, indent=2) + "\n")
    (DATA / "corpus_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(textwrap.shorten(texts["heldout"][0], 400))


if __name__ == "__main__":
    main()
