"""What the project needs from outside Python, checked before anything else runs; installed where it can be.

    python3 -m scripts.prerequisites java haproxy     # `make install` runs this first (`make test` adds chromium)

Each tool is looked for on PATH and, where a minimum version is named, its version is read. Whatever
is missing or too old is installed with apt-get when this runs as root on a Debian-like system (one
`apt-get update`, then one install); otherwise it prints one line per tool with the command that
installs it and exits 1, before a virtual environment or anything else is made. Standard library only:
it runs before the project's .venv/ exists.
"""
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Tool:
    command: str
    package: str  # the Debian package that brings it
    why: str
    min_major: Optional[int] = None  # the lowest major version that works; None: any


TOOLS = {tool.command: tool for tool in (
    Tool("java", "openjdk-17-jre-headless", "TorchServe's frontend runs on it", min_major=17),
    Tool("haproxy", "haproxy", "the Kubernetes pods' proxy, which the deployment tests run"),
    Tool("chromium", "chromium", "the browser that tests the playground page"),
)}


def java_major(version_output: str) -> Optional[int]:
    """The major version in `java -version`'s output: 'version "17.0.15"' is 17, the old '"1.8.0_392"' is 8."""
    found = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not found:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def problem(tool: Tool) -> Optional[str]:
    """Why `tool` cannot be used as it is (missing, too old, unreadable version), or None when it can."""
    path = shutil.which(tool.command)
    if path is None:
        return f"{tool.command} is missing"
    if tool.min_major is None:
        return None
    try:
        done = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{path} does not run ({error})"
    output = done.stderr + done.stdout
    major = java_major(output)
    if major is None:
        return f"{path} printed no version we can read ({output.strip()[:80]!r})"
    if major < tool.min_major:
        shown = re.search(r'version "([^"]+)"', output).group(1)
        return f"{path} is version {shown}, too old ({tool.min_major} or newer needed)"
    return None


def apt_install(packages: list[str]) -> bool:
    """apt-get update once, then install `packages` non-interactively; True when both succeeded."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing with apt-get: {' '.join(packages)}", file=sys.stderr, flush=True)
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]):
        if subprocess.run(command, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            return False
    return True


def can_install() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get") is not None


def ensure(names: list[str]) -> list[str]:
    """Checks (and where possible installs) the named tools; the one-line messages for those still unusable."""
    tools = [TOOLS[name] for name in names]
    missing = [tool for tool in tools if problem(tool)]
    if missing and can_install():
        apt_install(sorted({tool.package for tool in missing}))
    prefix = "" if can_install() else "sudo "
    return [f"{reason} ({tool.why}): install it with `{prefix}apt-get install {tool.package}`"
            for tool in missing if (reason := problem(tool))]


def main(argv: Optional[list[str]] = None) -> int:
    names = sys.argv[1:] if argv is None else argv
    unknown = [name for name in names if name not in TOOLS]
    if unknown:
        print(f"unknown tool(s): {', '.join(unknown)}; known: {', '.join(TOOLS)}", file=sys.stderr)
        return 2
    messages = ensure(names)
    for message in messages:
        print(message, file=sys.stderr)
    return 1 if messages else 0


if __name__ == "__main__":
    sys.exit(main())
