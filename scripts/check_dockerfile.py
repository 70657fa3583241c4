#!/usr/bin/env python3
"""Checks the Dockerfile against what is built, since `docker build` cannot run here.

    python3 scripts/check_dockerfile.py [--bin-dir DIR]

- the build stage's Rust image is the toolchain of rust-toolchain.toml;
- the binaries the build stage builds are the ones the runtime stage copies,
  and each exists in DIR (default $CARGO_TARGET_DIR/debug) and answers --help;
- the runtime stage's CMD, and the command and arguments of every container the
  Helm chart renders for altdb, run with --help: each names a copied binary and
  flags it accepts;
- every shared library the binaries link (ldd) comes from a Debian package the
  runtime stage installs, or from the base image (libc6, libgcc-s1);
- the runtime user is the chart's runAsUser, and not root.
"""

import argparse
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
BASE_PACKAGES = {"libc6", "libgcc-s1"}


def stages(text):
    """[(name, [instruction lines])] with continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            match = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
            result.append({"image": match.group(1), "name": match.group(2), "lines": []})
        elif result:
            result[-1]["lines"].append(line)
    return result


def instruction(stage, keyword):
    return [l[len(keyword):].strip() for l in stage["lines"] if l.upper().startswith(keyword + " ")]


def apt_packages(stage):
    packages = set()
    for run in instruction(stage, "RUN"):
        for command in run.split("&&"):
            words = command.split()
            if "apt-get" in words and "install" in words:
                packages |= {w for w in words[words.index("install") + 1:] if not w.startswith("-")}
    return packages


def main():
    parser = argparse.ArgumentParser()
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    parser.add_argument("--bin-dir", default=os.path.join(target, "debug"))
    args = parser.parse_args()
    bin_dir = pathlib.Path(args.bin_dir)
    problems = []

    parsed = stages((ROOT / "Dockerfile").read_text())
    build = next(s for s in parsed if s["name"] == "build")
    runtime = parsed[-1]

    channel = re.search(r'channel\s*=\s*"([^"]+)"', (ROOT / "rust-toolchain.toml").read_text()).group(1)
    if not build["image"].startswith(f"rust:{channel}"):
        problems.append(f"the build stage uses {build['image']}; rust-toolchain.toml says {channel}")

    built = set(re.findall(r"--bin\s+(\S+)", " ".join(instruction(build, "RUN"))))
    copied = set()
    for copy in instruction(runtime, "COPY"):
        words = copy.split()
        if words and words[0].startswith("--from="):
            copied |= {pathlib.Path(w).name for w in words[1:-1]}
    if built != copied:
        problems.append(f"the build stage builds {sorted(built)} but the runtime stage copies {sorted(copied)}")

    def runs_help(argv, what):
        binary = argv[0]
        if binary not in copied:
            problems.append(f"{what} runs {binary}, which the image does not have ({sorted(copied)})")
            return
        path = bin_dir / binary
        done = subprocess.run([str(path), *argv[1:], "--help"], capture_output=True, text=True)
        if done.returncode != 0:
            problems.append(f"{what}: `{shlex.join(argv)} --help` failed: {done.stderr.strip()}")

    for binary in sorted(copied):
        if not (bin_dir / binary).exists():
            problems.append(f"{bin_dir / binary} is missing: build the binaries first")
    if problems:
        sys.exit("\n".join(problems))

    for cmd in instruction(runtime, "CMD"):
        runs_help([a for a in json.loads(cmd) if a != "--help"], "the image's CMD")

    # The chart's containers (etcd's excepted: another image).
    rendered = subprocess.run([sys.executable, str(ROOT / "tests/helm/chart.py"), "render"],
                              capture_output=True, text=True, check=True).stdout
    chart_user = None
    for doc in json.loads(rendered):
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = doc["spec"]["template"]["spec"]
        for container in pod["containers"]:
            if container["command"][0].startswith("altdb-"):
                runs_help(container["command"] + container.get("args", []),
                          f"the chart's {doc['kind']} {doc['metadata']['name']}")
                chart_user = pod["securityContext"]["runAsUser"]

    user = instruction(runtime, "USER")
    uid = user[-1].split(":")[0] if user else "0"
    if uid in ("0", "root"):
        problems.append("the runtime stage runs as root; add USER 10001:10001")
    elif chart_user is not None and int(uid) != chart_user:
        problems.append(f"the image runs as {uid}, the chart as runAsUser {chart_user}")

    installed = apt_packages(runtime) | BASE_PACKAGES
    for binary in sorted(copied):
        ldd = subprocess.run(["ldd", str(bin_dir / binary)], capture_output=True, text=True, check=True)
        for line in ldd.stdout.splitlines():
            match = re.search(r"=>\s+(/\S+)", line)
            if not match:
                continue
            library = match.group(1)
            owner = subprocess.run(["dpkg", "-S", os.path.realpath(library)], capture_output=True, text=True)
            if owner.returncode != 0:
                owner = subprocess.run(["dpkg", "-S", library], capture_output=True, text=True)
            package = owner.stdout.split(":")[0].strip() if owner.returncode == 0 else None
            if package is None:
                problems.append(f"{binary} links {library}, which no Debian package provides")
            elif package not in installed:
                problems.append(f"{binary} links {library} from {package}; install it in the runtime stage")

    if problems:
        sys.exit("\n".join(problems))
    print(f"Dockerfile OK: {sorted(copied)} built and copied, commands and chart arguments accepted, "
          f"libraries from {sorted(apt_packages(runtime))}")


if __name__ == "__main__":
    main()
