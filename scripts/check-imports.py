#!/usr/bin/env python3
"""Fails on any module cycle in the workspace's crates, and on a launch/ module
that imports code which starts threads.

Why a script of our own: cargo-modules does the cycle check but builds
rust-analyzer (minutes on CI's two cores); a reading of `use` lines and
`crate::`/`super::` paths is enough for a tree that keeps to plain paths.

The rule, level by level: the children of one module, plus that module's own
file, must not depend on each other in a cycle. A child's subtree counts as
one node (`gateway::inspect` and everything below it), so `a::x -> b` and
`b -> a::y` is a cycle between `a` and `b`. A module using its own
descendants is composition and is not an edge; `mod x;` and `pub use` of a
child are not edges either (a re-export is resolved to where the item lives).

Usage: check-imports.py [CRATE_SRC_DIR ...]   (default: every crate's src/)
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SRCS = ["src", "builder/src", "supervisor/src", "snapshot/src", "shim/src"]

# Modules under launch/ run in the single-threaded launcher (libcontainer's
# clone is unsound in a process with threads): neither they nor any module of
# the crate they reach, directly or through others, may start a thread or name
# an async runtime.
LAUNCH_ROOT = "launch"
THREADED = re.compile(r"\b(tokio::|rayon::|thread::spawn|thread::Builder|thread::scope|std::thread::spawn)")


def strip_comments(text):
    out = []
    for line in text.split("\n"):
        # A `//` that starts a comment follows whitespace or starts the line
        # (`"https://..."` inside a string does not).
        m = re.search(r"(^|\s)//", line)
        if m:
            line = line[: m.start()]
        out.append(line)
    return "\n".join(out)


def strip_strings(text):
    text = re.sub(r'r#+".*?"#+', '""', text, flags=re.S)
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', text, flags=re.S)


def cut_block(text, start):
    """Returns text with the brace block that opens at or after `start` removed."""
    i = text.find("{", start)
    semi = text.find(";", start)
    if i < 0 or (0 <= semi < i):
        return text[:start] + text[semi + 1 :] if semi >= 0 else text[:start]
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[:start] + text[j + 1 :]
    return text[:start]


def strip_tests(text):
    """Drops `#[cfg(test)]` items (test modules and test-only helpers)."""
    while True:
        m = re.search(r"#\[cfg\(test\)\]", text)
        if not m:
            return text
        text = cut_block(text, m.start())


def module_files(src):
    """Maps module path (tuple) -> file path for one crate's src dir."""
    mods = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            full = os.path.join(dirpath, f)
            rel = os.path.relpath(full, src)[:-3].split(os.sep)
            if rel in (["lib"], ["main"]):
                path = ()
            elif rel[-1] == "mod":
                path = tuple(rel[:-1])
            else:
                path = tuple(rel)
            if path == () and rel == ["main"] and () in mods:
                continue
            mods[path] = full
    return mods


def test_only_modules(mods):
    """Module files declared under #[cfg(test)] by their parent."""
    skip = set()
    for path, f in mods.items():
        text = strip_comments(open(f).read())
        for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", text):
            skip.add(path + (m.group(1),))
    return skip


def expand_use(tree):
    """Expands a use tree `a::{b, c::{d, e as f}}` into paths."""
    tree = re.sub(r"\s+", "", tree)
    def go(prefix, t):
        if "{" not in t:
            t = t.split("as")[0] if re.search(r"\bas\b", t) else t
            yield prefix + [p for p in t.split("::") if p]
            return
        head, _, rest = t.partition("{")
        inner = rest[: rest.rfind("}")]
        parts, depth, cur = [], 0, ""
        for ch in inner:
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
                continue
            depth += ch == "{"
            depth -= ch == "}"
            cur += ch
        parts.append(cur)
        base = prefix + [p for p in head.split("::") if p]
        for p in parts:
            if p:
                yield from go(base, p)
    return list(go([], tree))


def raw_paths(text, children):
    """Every crate-relative path a file names, as lists of segments, with the
    way it was written (crate, super..., self, or a child module name)."""
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        for p in expand_use(m.group(1)):
            paths.append(p)
    body = re.sub(r"\buse\s+[^;]+;", "", text)
    for m in re.finditer(r"\b((?:crate|self|super)(?:::(?:super|\w+))+)", body):
        paths.append(m.group(1).split("::"))
    if children:
        alt = "|".join(sorted(children))
        for m in re.finditer(r"(?<![:\w])((?:%s)(?:::\w+)+)" % alt, body):
            paths.append(m.group(1).split("::"))
    return paths


def resolve(cur, segs, mods, children):
    if not segs:
        return None
    if segs[0] == "crate":
        base, rest = (), segs[1:]
    elif segs[0] in ("self", "super"):
        base = cur
        rest = segs
        while rest and rest[0] in ("self", "super"):
            if rest[0] == "super":
                base = base[:-1]
            rest = rest[1:]
    elif segs[0] in children:
        base, rest = cur, segs
    else:
        return None
    path = base
    for s in rest:
        if path + (s,) in mods:
            path = path + (s,)
        else:
            break
    return path


def reexports(mods, texts):
    """(module, name) -> module the item comes from, for `pub use` lines."""
    out = {}
    for path, text in texts.items():
        children = {p[-1] for p in mods if len(p) == len(path) + 1 and p[:-1] == path}
        for m in re.finditer(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", text):
            for segs in expand_use(m.group(1)):
                src = resolve(path, segs, mods, children)
                if src is not None and segs:
                    name = segs[-1]
                    out[(path, name)] = src
    return out


def edges(mods, texts):
    rex = reexports(mods, texts)
    deps = {p: set() for p in mods}
    for cur, text in texts.items():
        children = {p[-1] for p in mods if len(p) == len(cur) + 1 and p[:-1] == cur}
        # `pub use` lines are resolved through `reexports`, not edges here.
        text = re.sub(r"\bpub(?:\([^)]*\))?\s+use\s+[^;]+;", "", text)
        for segs in raw_paths(text, children):
            tgt = resolve(cur, segs, mods, children)
            if tgt is None:
                continue
            # An item named through a re-export lives where it was defined.
            for _ in range(8):
                idx = index_after(cur, segs, tgt)
                name = segs[idx] if idx < len(segs) else None
                if name and rex.get((tgt, name), tgt) != tgt:
                    tgt = rex[(tgt, name)]
                    segs = ["crate", *tgt, name]
                    continue
                break
            if tgt[: len(cur)] == cur:
                continue  # itself, or its own descendants
            deps[cur].add(tgt)
    return deps


def index_after(cur, segs, tgt):
    """Index in segs of the segment that follows module path tgt."""
    if segs[0] == "crate":
        return 1 + len(tgt)
    if segs[0] in ("self", "super"):
        base = cur
        i = 0
        while i < len(segs) and segs[i] in ("self", "super"):
            if segs[i] == "super":
                base = base[:-1]
            i += 1
        return i + (len(tgt) - len(base))
    return len(tgt) - len(cur)


def cycles(deps):
    """Level-wise: among the children of each module plus its own file."""
    found = []
    parents = {p[:-1] for p in deps if p} | {()}
    for parent in sorted(parents):
        def node(m):
            if m[: len(parent)] != parent:
                return None
            if m == parent:
                return "(own file)"
            return m[len(parent)]
        graph = {}
        for src, tgts in deps.items():
            a = node(src)
            if a is None:
                continue
            for t in tgts:
                b = node(t)
                if b is None or b == a:
                    continue
                graph.setdefault(a, {}).setdefault(b, set()).add(("::".join(src), "::".join(t)))
        for comp in sccs(graph):
            if len(comp) > 1:
                found.append((parent, comp, graph))
    return found


def sccs(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    nodes = set(graph) | {b for v in graph.values() for b in v}
    sys.setrecursionlimit(10000)
    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
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
            out.append(sorted(comp))
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def check_launch(mods, texts, deps):
    """Every module reachable from launch/ must start no thread."""
    bad = []
    start = sorted(p for p in mods if p and p[0] == LAUNCH_ROOT)
    via = {p: None for p in start}
    queue = list(start)
    while queue:
        cur = queue.pop(0)
        for t in sorted(deps[cur]):
            if t not in via:
                via[t] = cur
                queue.append(t)
    for path in sorted(via):
        m = THREADED.search(texts[path])
        if not m:
            continue
        chain, p = [], path
        while p is not None:
            chain.append("::".join(p) or "crate")
            p = via[p]
        line = texts[path][: m.start()].count("\n") + 1
        bad.append(
            f"{mods[path]}:{line}: `{m.group(1)}` is reachable from the single-threaded launcher "
            f"({' <- '.join(chain)})"
        )
    return bad


def main():
    srcs = sys.argv[1:] or [os.path.join(ROOT, s) for s in DEFAULT_SRCS]
    failures = []
    total_mods = 0
    for src in srcs:
        if not os.path.isdir(src):
            continue
        mods = module_files(src)
        skip = test_only_modules(mods)
        mods = {p: f for p, f in mods.items() if not any(p[: len(s)] == s for s in skip)}
        texts = {p: strip_tests(strip_strings(strip_comments(open(f).read()))) for p, f in mods.items()}
        deps = edges(mods, texts)
        total_mods += len(mods)
        for parent, comp, graph in cycles(deps):
            where = "::".join(parent) or "crate root"
            lines = [f"{os.path.relpath(src, ROOT)}: cycle among the children of {where}: {' <-> '.join(comp)}"]
            for a in comp:
                for b in comp:
                    for s, t in sorted(graph.get(a, {}).get(b, ())):
                        lines.append(f"    {s or 'crate'} -> {t or 'crate'}")
            failures.append("\n".join(lines))
        failures.extend(check_launch(mods, texts, deps))
    for f in failures:
        print(f)
    if failures:
        print(f"check-imports: {len(failures)} problem(s)")
        return 1
    print(f"check-imports: {total_mods} modules, no cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
