#!/usr/bin/env python3
"""Checks the repository's Markdown: links resolve, nothing points outside the repository.

    python3 scripts/check_docs.py [FILE.md ...]   # default: every Markdown file git tracks

For each file (fenced code blocks and inline code are skipped):

* every relative link — `[text](path)`, `[text](path#anchor)`, `[label]: path`, `href="path"`,
  `src="path"` — names a file or directory inside the repository;
* an anchor (`#name`, alone or after a Markdown path) exists in the target file: a GitHub heading
  slug or an explicit `<a id="name">`;
* no link leaves the repository (`../` past its root, an absolute path, `file:`), and the text
  names no document that is not in it (`../shared/…`, `/work/…`, a "SPEC").

Also checks that README.md's error table lists every `DenyCode` of src/policy/mod.rs.

Exit status: 0 when clean, 1 with one line per problem (`file:line: problem`). Standard library
only; no network access (http(s) links are not fetched).
"""
import os
import re
import subprocess
import sys

ROOT = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](dest) and ![alt](dest); dest may be wrapped in <…> and followed by a "title".
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
HTML_ATTR = re.compile(r"\b(?:href|src)\s*=\s*\"([^\"]*)\"")
EXPLICIT_ANCHOR = re.compile(r"<a\s+(?:id|name)\s*=\s*\"([^\"]+)\"")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
# Documents that live outside the repository and must not be relied on by its docs.
OUTSIDE = [
    (re.compile(r"\.\./shared\b"), "points to ../shared, outside the repository"),
    (re.compile(r"/work/"), "names a path on a development machine (/work/…)"),
    (re.compile(r"\bSPEC\b"), 'cites a "SPEC" that is not in the repository (cite docs/reference.md)'),
]


def markdown_files():
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "*.md"], cwd=ROOT, check=True, capture_output=True
        ).stdout
        return [f for f in out.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        found = []
        for dirpath, dirnames, filenames in os.walk(ROOT):
            dirnames[:] = [d for d in dirnames if d not in (".git", "target", "node_modules")]
            found += [
                os.path.relpath(os.path.join(dirpath, f), ROOT) for f in filenames if f.endswith(".md")
            ]
        return sorted(found)


def prose_lines(text):
    """(line number, line) outside fenced code blocks, with inline code spans blanked."""
    fenced = False
    for number, line in enumerate(text.split("\n"), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)


def slug(heading):
    """GitHub's anchor for a heading: rendered text, lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links -> their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


_anchor_cache = {}


def anchors(path):
    """Every anchor a Markdown file defines: heading slugs (with GitHub's -1, -2 suffixes for
    repeats) and explicit <a id="…">."""
    if path not in _anchor_cache:
        found = set()
        seen = {}
        with open(path, encoding="utf-8") as f:
            text = f.read()
        fenced = False
        for line in text.split("\n"):
            if FENCE.match(line):
                fenced = not fenced
                continue
            if fenced:
                continue
            found.update(EXPLICIT_ANCHOR.findall(line))
            m = HEADING.match(line)
            if m:
                base = slug(m.group(2))
                n = seen.get(base, 0)
                seen[base] = n + 1
                found.add(base if n == 0 else f"{base}-{n}")
        _anchor_cache[path] = found
    return _anchor_cache[path]


checked = 0


def check_link(source, dest):
    """A problem with one link target, or None."""
    global checked
    checked += 1
    if not dest or SCHEME.match(dest):
        if dest.lower().startswith("file:"):
            return f"link {dest!r} points to a local file outside the repository"
        return None  # http(s), mailto: not checked here
    path_part, _, anchor = dest.partition("#")
    if path_part.startswith("/"):
        return f"link {dest!r} is absolute; use a path relative to {source}"
    if path_part:
        target = os.path.realpath(os.path.join(ROOT, os.path.dirname(source), path_part))
        if os.path.commonpath([target, ROOT]) != ROOT:
            return f"link {dest!r} leaves the repository"
        if not os.path.exists(target):
            return f"link {dest!r}: {os.path.relpath(target, ROOT)} does not exist"
    else:
        target = os.path.join(ROOT, source)
    if anchor and target.endswith(".md") and os.path.isfile(target):
        if anchor not in anchors(target):
            return f"link {dest!r}: no anchor #{anchor} in {os.path.relpath(target, ROOT)}"
    return None


def check_file(source):
    problems = []
    with open(os.path.join(ROOT, source), encoding="utf-8") as f:
        text = f.read()
    for number, line in prose_lines(text):
        dests = INLINE_LINK.findall(line) + HTML_ATTR.findall(line)
        m = REF_DEF.match(line)
        if m:
            dests.append(m.group(1))
        for dest in dests:
            problem = check_link(source, dest)
            if problem:
                problems.append(f"{source}:{number}: {problem}")
    # Outside references count in code blocks too: a command that reads ../shared fails as well.
    for number, line in enumerate(text.split("\n"), 1):
        for pattern, why in OUTSIDE:
            if pattern.search(line):
                problems.append(f"{source}:{number}: {why}")
    return problems


def check_error_table():
    """README's error table names every DenyCode (src/policy/mod.rs), and no other code."""
    src_path = os.path.join(ROOT, "src", "policy", "mod.rs")
    readme_path = os.path.join(ROOT, "README.md")
    if not (os.path.isfile(src_path) and os.path.isfile(readme_path)):
        return []
    with open(src_path, encoding="utf-8") as f:
        codes = set(re.findall(r'DenyCode::\w+ => "([a-z_]+)"', f.read()))
    with open(readme_path, encoding="utf-8") as f:
        readme = f.read()
    start = readme.find("### Error codes")
    if start < 0:
        return ["README.md: no '### Error codes' section"]
    end = readme.find("\n#", start + 1)
    listed = set(re.findall(r"^\| \d{3} \| `([a-z_]+)` \|", readme[start:end], re.M))
    problems = [f"README.md: error table lacks `{c}` (DenyCode)" for c in sorted(codes - listed)]
    problems += [f"README.md: error table lists `{c}`, which is no DenyCode" for c in sorted(listed - codes)]
    return problems


def main(argv):
    files = argv or markdown_files()
    problems = []
    for source in files:
        problems += check_file(os.path.relpath(os.path.realpath(source), ROOT) if argv else source)
    if not argv:
        problems += check_error_table()
    for p in problems:
        print(p)
    print(f"check_docs: {len(files)} Markdown files, {checked} links, {len(problems)} problems", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
