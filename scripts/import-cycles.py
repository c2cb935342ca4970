#!/usr/bin/env python3
"""Finds import circles between the files of each crate (DESIGN §9: none longer than two).

Usage: scripts/import-cycles.py [--tests] [CRATE_DIR ...]   (default: crates/* and the root)

Each `.rs` file under a crate's `src/` is a node. Every path the file names that starts with
`crate::`, `super::` or `self::` (in `use` trees, braces included, and inline paths such as
`crate::error::ApiError`) is an edge to the deepest file that path reaches. Test code (files
named `*_tests.rs`, `tests.rs`, and `#[cfg(test)] mod tests` blocks) is left out unless
`--tests` is given: a test module importing its parent is not a layering problem.

For every strongly connected set of files it looks for a simple circle of three files or
more and prints it. Two files that import each other are allowed (a type and its impls);
longer circles are not. Exits 1 when it printed one.
"""

import re
import sys
from pathlib import Path

COMMENT = re.compile(r"//[^\n]*")
STRING = re.compile(r'"(?:\\.|[^"\\])*"')


def module_of(src: Path, file: Path) -> tuple:
    rel = file.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts in (["lib"], ["main"]):
        return ()
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


def strip_tests(text: str) -> str:
    """Cuts `#[cfg(test)] mod tests { … }` blocks and `#[cfg(test)] mod x;` lines."""
    out = []
    i = 0
    pat = re.compile(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*([;{])")
    while True:
        m = pat.search(text, i)
        if not m:
            out.append(text[i:])
            break
        out.append(text[i : m.start()])
        if m.group(1) == ";":
            i = m.end()
            continue
        depth = 1
        j = m.end()
        while j < len(text) and depth:
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
            j += 1
        i = j
    return "".join(out)


def parse_tree(text: str, i: int) -> tuple:
    """Parses a use tree at text[i:]; returns (list of segment lists, end index)."""
    paths = []
    seg = []
    while i < len(text):
        m = re.match(r"\s*(\w+)\s*", text[i:])
        if text[i:].lstrip().startswith("{"):
            i = text.index("{", i) + 1
            while True:
                sub, i = parse_tree(text, i)
                paths.extend(seg + s for s in sub)
                rest = text[i:].lstrip()
                i = len(text) - len(rest)
                if rest.startswith(","):
                    i += 1
                    if text[i:].lstrip().startswith("}"):
                        i = text.index("}", i) + 1
                        return paths, i
                    continue
                if rest.startswith("}"):
                    return paths, i + 1
                return paths, i
        if not m:
            break
        seg.append(m.group(1))
        i += m.end()
        if text.startswith("::", i):
            i += 2
            continue
        break
    paths.append(seg)
    return paths, i


def references(text: str, here: tuple) -> set:
    """Module paths (tuples) the text names, resolved to absolute paths from the crate root."""
    text = STRING.sub('""', COMMENT.sub("", text))
    found = set()
    for m in re.finditer(r"(?<![\w:])(crate|super|self)::", text):
        base = m.group(1)
        paths, _ = parse_tree(text, m.end())
        for p in paths:
            if base == "crate":
                absolute = tuple(p)
            elif base == "self":
                absolute = here + tuple(p)
            else:
                up = list(here[:-1])
                rest = list(p)
                while rest and rest[0] == "super":
                    up = up[:-1]
                    rest = rest[1:]
                absolute = tuple(up) + tuple(rest)
            found.add(absolute)
    return found


def crate_graph(src: Path, with_tests: bool) -> dict:
    files = {}
    for f in sorted(src.rglob("*.rs")):
        if not with_tests and (f.name.endswith("_tests.rs") or f.name == "tests.rs"):
            continue
        files[module_of(src, f)] = f
    graph = {}
    for mod, f in files.items():
        text = f.read_text()
        if not with_tests:
            text = strip_tests(text)
        edges = set()
        for path in references(text, mod):
            # The deepest file the path reaches: crate::a::b::Item → a/b.rs, else a.rs.
            for n in range(len(path), 0, -1):
                target = path[:n]
                if target in files:
                    if target != mod:
                        edges.add(target)
                    break
        graph[mod] = edges
    return graph


def sccs(graph: dict) -> list:
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def long_cycle(graph: dict, comp: list):
    """A simple circle of ≥ 3 files inside one strongly connected set, if there is one."""
    members = set(comp)
    best = None
    for start in sorted(comp):
        path = [start]
        seen = {start}

        def dfs(v, budget=[200000]):
            nonlocal best
            budget[0] -= 1
            if budget[0] < 0:
                return
            for w in sorted(graph[v] & members):
                if w == start and len(path) >= 3:
                    if best is None or len(path) > len(best):
                        best = list(path)
                elif w not in seen and w > start:
                    seen.add(w)
                    path.append(w)
                    dfs(w)
                    path.pop()
                    seen.discard(w)

        dfs(start)
        if best:
            return best
    return best


def name(mod: tuple) -> str:
    return "/".join(mod) + ".rs" if mod else "lib.rs"


def main() -> int:
    args = sys.argv[1:]
    with_tests = "--tests" in args
    dirs = [Path(a) for a in args if a != "--tests"]
    root = Path(__file__).resolve().parent.parent
    if not dirs:
        dirs = sorted((root / "crates").iterdir()) + [root]
    bad = False
    for d in dirs:
        src = d / "src"
        if not src.is_dir():
            continue
        graph = crate_graph(src, with_tests)
        found = []
        for comp in sccs(graph):
            if len(comp) < 3:
                continue
            cycle = long_cycle(graph, comp)
            if cycle:
                found.append((comp, cycle))
        label = d.name if d != root else "infraos (root)"
        if not found:
            print(f"{label}: {len(graph)} files, no import circle longer than two files")
            continue
        bad = True
        for comp, cycle in found:
            print(
                f"{label}: circle of {len(comp)} files: "
                + ", ".join(name(m) for m in sorted(comp))
            )
            print(f"  e.g. {' -> '.join(name(m) for m in cycle + [cycle[0]])}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
