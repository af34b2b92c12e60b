#!/usr/bin/env python3
"""Fails when a Rust source file imports a file that imports it back.

Reads every crate's `src/` (the crate names come from each member's Cargo.toml), maps each file
to its module path, and follows the paths its code names: `use` lines and qualified paths
(`crate::a::b`, `super::x`, `quiver_operators::ml::train`). A path counts as an import of the
deepest module file it reaches. A parent declaring its children (`mod x;`) is not an import, and
neither is a file's own `#[cfg(test)] mod tests` block. Prints each pair and exits 1.

    python3 scripts/circles.py [ROOT]
"""

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
PATH_RE = re.compile(r"\b((?:crate|super|self|quiver_\w+)(?:\s*::\s*\w+)+)")
# Comments, raw strings, strings and char literals, whichever starts first.
LITERAL_RE = re.compile(
    r"//[^\n]*|/\*.*?\*/|r(#*)\".*?\"\1|b?\"(?:\\.|[^\"\\])*\"|b?'(?:\\.|[^'\\\n])'", re.S
)
USE_RE = re.compile(r"\buse\s+([^;]+);", re.S)


def crates():
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    for member in members:
        manifest = tomllib.loads((ROOT / member / "Cargo.toml").read_text())
        src = ROOT / member / "src"
        if src.is_dir():
            yield manifest["package"]["name"].replace("-", "_"), src


def module_path(src, file):
    """The module path of `file` inside its crate, as a tuple of names."""
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts.pop()
    return tuple(parts)


def strip(text):
    """The code without comments, string literals and the trailing `#[cfg(test)] mod tests`."""
    text = LITERAL_RE.sub(lambda m: " " if m.group(0).startswith("/") else '""', text)
    cut = re.search(r"#\[cfg\(test\)\]\s*mod\s+tests\b", text)
    return text[: cut.start()] if cut else text


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"]."""
    tree = re.sub(r"\s+", "", re.sub(r"\s+as\s+\w+", "", tree))
    if "{" not in tree:
        return [tree]
    head, rest = tree.split("{", 1)
    body = rest[: rest.rfind("}")]
    items, depth, cur = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    items.append(cur)
    return [p for item in items if item for p in expand_use(head + item)]


def main():
    files = {}  # (crate, module path) -> file
    sources = []
    for crate, src in crates():
        # A binary beside a library is a crate of its own, with the modules main.rs declares.
        main = src / "main.rs"
        bin_mods = set(re.findall(r"^\s*(?:pub\s+)?mod\s+(\w+);", main.read_text(), re.M)) if (
            main.exists() and (src / "lib.rs").exists()) else set()
        for file in sorted(src.rglob("*.rs")):
            mod = module_path(src, file)
            in_bin = file == main or (mod and mod[0] in bin_mods)
            key = crate + ":bin" if in_bin else crate
            files[(key, mod)] = file
            sources.append((key, mod, file))

    imports = {}
    for crate, mod, file in sources:
        code = strip(file.read_text())
        paths = [p for tree in USE_RE.findall(code) for p in expand_use(tree)]
        paths += [re.sub(r"\s+", "", p) for p in PATH_RE.findall(USE_RE.sub("", code))]
        targets = set()
        for path in paths:
            segs = path.split("::")
            if segs[0] == "crate":
                target_crate, base, segs = crate, (), segs[1:]
            elif segs[0] in ("self", "super"):
                base = mod
                while segs and segs[0] in ("self", "super"):
                    if segs.pop(0) == "super":
                        base = base[:-1]
                target_crate = crate
            elif segs[0].startswith("quiver_"):
                # ":bin" is never named from outside; its own files name their library this way.
                target_crate, base, segs = segs[0], (), segs[1:]
            else:
                continue
            full = base + tuple(segs)
            for n in range(len(full), -1, -1):
                target = files.get((target_crate, full[:n]))
                if target:
                    break
            if target and target != file:
                targets.add(target)
        imports[file] = targets

    circles = sorted(
        (a, b)
        for a, targets in imports.items()
        for b in targets
        if a in imports.get(b, ()) and str(a) < str(b)
    )
    for a, b in circles:
        print(f"{a.relative_to(ROOT)} <-> {b.relative_to(ROOT)}")
    if circles:
        print(f"{len(circles)} pairs of files import each other", file=sys.stderr)
        sys.exit(1)
    print(f"no circles among {len(imports)} files")


if __name__ == "__main__":
    main()
