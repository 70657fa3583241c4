#!/usr/bin/env python3
"""Lists the import graph of a crate's modules and any cycle in it.

usage: scripts/module_cycles.py leaf/src [--graph]

A module is a file (`a/b.rs` or `a/b/mod.rs` is module `a::b`). Module A
depends on B when A has a `use crate::B..` or `use super::..` line naming B (or
a module inside B), ignoring `#[cfg(test)]` blocks and a module's own children.
Exits 1 when there is a cycle.
"""
import os
import re
import sys


def modules(root):
    found = {}
    for directory, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root)[:-3].split(os.sep)
            if rel[-1] == "mod":
                rel = rel[:-1]
            if rel in (["lib"], ["main"]) or rel[:1] == ["bin"]:
                continue
            found["::".join(rel)] = path
    return found


def without_tests(text):
    index = text.find("#[cfg(test)]")
    return text if index < 0 else text[:index]


def imports(module, text, known):
    targets = set()
    for match in re.finditer(r"^\s*(?:pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", text, re.M):
        path = match.group(1).replace("\n", " ")
        heads = []
        if path.startswith("crate::"):
            heads.append(path[len("crate::"):])
        elif path.startswith("super::"):
            parent = module.split("::")[:-1]
            rest = path
            while rest.startswith("super::"):
                rest = rest[len("super::"):]
                if rest.startswith("super::"):
                    parent = parent[:-1]
            heads.append("::".join(parent + [rest]) if parent else rest)
        for head in heads:
            parts = re.split(r"::", re.sub(r"\{.*", "", head).strip())
            parts = [p for p in parts if p]
            # the longest known module the path names
            for n in range(len(parts), 0, -1):
                candidate = "::".join(parts[:n])
                if candidate in known:
                    if candidate != module and not candidate.startswith(module + "::"):
                        targets.add(candidate)
                    break
            # `use crate::a::{b, c}` may name several modules of `a`
            group = re.search(r"\{(.*)\}", head)
            base = "::".join(parts)
            if group:
                for item in group.group(1).split(","):
                    name = item.strip().split("::")[0].split(" ")[0]
                    candidate = f"{base}::{name}" if base else name
                    if candidate in known and candidate != module and not candidate.startswith(module + "::"):
                        targets.add(candidate)
    return targets


def cycles(graph):
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def main():
    root = sys.argv[1]
    known = modules(root)
    graph = {m: imports(m, without_tests(open(p).read()), known) for m, p in known.items()}
    if "--graph" in sys.argv:
        for module in sorted(graph):
            print(f"{module} -> {', '.join(sorted(graph[module])) or '(none)'}")
    found = cycles(graph)
    for cycle in found:
        print("cycle: " + " -> ".join(cycle))
    if not found:
        print(f"no cycles among {len(known)} modules of {root}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
