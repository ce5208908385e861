#!/usr/bin/env python3
"""A flame graph (SVG, no scripts, no external assets) from `perf script` output.

    perf record -F 999 -g -p PID -o perf.data -- sleep 6
    perf script -i perf.data | bench/flamegraph.py --title "pgrelay relay" > flame.svg

Each sample's stack is folded root-first; a frame's width is its share of the
samples. Frames are coloured by where they run: kernel (orange), the proxy's
own code (blue), libraries (green). Written for this project (Debian has no
FlameGraph package); stdlib only.
"""

import argparse
import collections
import html
import re
import sys

FRAME = re.compile(r"^\s*[0-9a-f]+\s+(.+?)\s+\((.+)\)\s*$")


def parse(lines):
    """Folded stacks (root first) -> sample count."""
    stacks = collections.Counter()
    frames = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if frames:
                stacks[tuple(reversed(frames))] += 1
            frames = []
            continue
        m = FRAME.match(line)
        if not m:
            continue  # the sample's header line (comm, pid, time, event)
        sym, dso = m.group(1), m.group(2)
        sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
        if sym == "[unknown]":
            # No symbol (or a stack walked through code without frame
            # pointers): one frame for the whole run of them.
            sym = "[unknown in %s]" % dso.rsplit("/", 1)[-1].strip("[]")
            if frames and frames[-1][0] == sym:
                continue
        kind = "k" if "kernel" in dso or dso.startswith("[k") else (
            "l" if ".so" in dso else "p")
        frames.append((sym, kind))
    if frames:
        stacks[tuple(reversed(frames))] += 1
    return stacks


def build_tree(stacks):
    root = {"name": "all", "kind": "r", "n": 0, "kids": {}}
    for stack, n in stacks.items():
        node = root
        node["n"] += n
        for sym, kind in stack:
            node = node["kids"].setdefault(sym, {"name": sym, "kind": kind, "n": 0, "kids": {}})
            node["n"] += n
    return root


COLOURS = {"k": (230, 140, 50), "p": (80, 140, 220), "l": (90, 180, 90), "r": (200, 200, 200)}


def colour(kind, name):
    r, g, b = COLOURS[kind]
    h = sum(map(ord, name)) % 30 - 15  # a little variation between neighbours
    return "rgb(%d,%d,%d)" % (max(0, min(255, r + h)), max(0, min(255, g + h)), max(0, min(255, b + h)))


def render(root, title, width=1200, row=16, min_px=0.3):
    rects = []
    depth_max = [0]

    def walk(node, x, depth):
        w = node["n"] / root["n"] * width
        if w < min_px:
            return
        depth_max[0] = max(depth_max[0], depth)
        rects.append((x, depth, w, node))
        cx = x
        for kid in sorted(node["kids"].values(), key=lambda k: k["name"]):
            walk(kid, cx, depth + 1)
            cx += kid["n"] / root["n"] * width

    walk(root, 0.0, 0)
    top = 40
    height = top + (depth_max[0] + 1) * row + 10
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'font-family="monospace" font-size="11">' % (width, height),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="18" font-size="14" text-anchor="middle">%s</text>' % (width // 2, html.escape(title)),
           '<text x="%d" y="33" text-anchor="middle" fill="#555">%d samples; kernel orange, '
           'pgrelay/PgBouncer blue, libraries green; hover for counts</text>' % (width // 2, root["n"])]
    for x, depth, w, node in rects:
        y = height - 10 - (depth + 1) * row
        pct = 100.0 * node["n"] / root["n"]
        label = "%s (%d samples, %.1f%%)" % (node["name"], node["n"], pct)
        out.append('<g><title>%s</title><rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s" '
                   'stroke="white" stroke-width="0.5"/>' % (html.escape(label), x, y, w, row - 1,
                                                            colour(node["kind"], node["name"])))
        chars = int(w / 6.6)
        if chars >= 3:
            text = node["name"] if len(node["name"]) <= chars else node["name"][:chars - 2] + ".."
            out.append('<text x="%.1f" y="%d">%s</text>' % (x + 2, y + row - 4, html.escape(text)))
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--title", default="flame graph")
    p.add_argument("--width", type=int, default=1200)
    a = p.parse_args()
    stacks = parse(sys.stdin)
    if not stacks:
        sys.exit("flamegraph: no samples with call stacks in the input (perf record -g?)")
    sys.stdout.write(render(build_tree(stacks), a.title, a.width))


if __name__ == "__main__":
    main()
