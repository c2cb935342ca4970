#!/usr/bin/env python3
"""Import circles between the files of one crate: every `crate::a::b` path (in `use`
declarations and in code) is an edge from the file to the file defining module `a::b` (or
`a`). Test code (from a file's first `#[cfg(test)]` on, and `*tests.rs` files) is left out:
tests beside the code may reach up. Prints each strongly connected set of more than `--max` files.

    scripts/import_cycles.py crates/infraos-server [--max 2]
"""
import os
import re
import sys


def modules(src):
    """Maps module paths (('api', 'objects')) to files."""
    out = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs") or f.endswith("tests.rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), src)[:-3].split(os.sep)
            if rel in (["lib"], ["main"]):
                out[()] = os.path.join(dirpath, f)
            else:
                out[tuple(rel)] = os.path.join(dirpath, f)
    return out


def resolve(mods, path):
    for n in range(len(path), 0, -1):
        if tuple(path[:n]) in mods:
            return tuple(path[:n])
    return None


def edges(mods):
    graph = {m: set() for m in mods}
    for m, f in mods.items():
        text = open(f, encoding="utf-8").read()
        text = text.split("#[cfg(test)]")[0]
        text = re.sub(r"//[^\n]*", "", text)
        for use in re.finditer(r"\bcrate::([A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*)", text):
            target = resolve(mods, use.group(1).split("::"))
            if target is not None and target != m and target != ():
                graph[m].add(target)
        # `super::x` from a child module
        for use in re.finditer(r"\bsuper::([A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*)", text):
            base = list(m[:-1])
            target = resolve(mods, base + use.group(1).split("::"))
            if target is not None and target != m and target != ():
                graph[m].add(target)
    return graph


def sccs(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main():
    crate = sys.argv[1]
    limit = int(sys.argv[sys.argv.index("--max") + 1]) if "--max" in sys.argv else 2
    mods = modules(os.path.join(crate, "src"))
    bad = [c for c in sccs(edges(mods)) if len(c) > limit]
    for c in bad:
        print(f"{len(c)} files:", ", ".join(sorted("::".join(m) for m in c)))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
