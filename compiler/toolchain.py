"""The toolchain a target needs on this machine (its cross compiler), checked before
the long work so a missing one costs a line, not a build."""
from __future__ import annotations

import shutil

from edgec.compiler.errors import BuildError

CROSS_INSTALL = {
    "aarch64-linux-gnu-g++": "apt-get install -y g++-aarch64-linux-gnu (Debian/Ubuntu)",
}


def check_cross_compiler(target) -> None:
    """Fail early, with the install command, if the target's cross compiler is missing."""
    if target.cross_cc and shutil.which(target.cross_cc) is None:
        how = CROSS_INSTALL.get(target.cross_cc, "install it and put it on PATH")
        raise BuildError(f"cross compiler {target.cross_cc!r} for target {target.name!r} "
                         f"not found on PATH; install it: {how}")
