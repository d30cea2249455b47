#!/usr/bin/env python3
"""Write an uncompressed newc cpio archive from a gen_init_cpio-style list.

    mkcpio.py LIST OUTPUT

LIST lines (as the kernel's usr/gen_init_cpio understands them):
    dir   NAME MODE UID GID
    file  NAME SOURCE MODE UID GID
    slink NAME TARGET MODE UID GID
    nod   NAME MODE UID GID c|b MAJOR MINOR
MODE is octal.  No device node is created on the build machine: the node
exists only inside the archive.  All mtimes are 0, so the output depends
only on the list and the files' contents.
"""
import os
import stat
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    out = []
    ino = 721

    def entry(name, mode, uid, gid, data=b"", rdev=(0, 0), nlink=1):
        nonlocal ino
        name = name.lstrip("/").encode() + b"\0"
        ino += 1
        hdr = "070701" + "".join("%08X" % v for v in (
            ino, mode, uid, gid, nlink, 0, len(data), 0, 0,
            rdev[0], rdev[1], len(name), 0))
        out.append(hdr.encode() + name)
        out.append(b"\0" * (-(110 + len(name)) % 4))
        out.append(data)
        out.append(b"\0" * (-len(data) % 4))

    with open(src) as f:
        for lineno, line in enumerate(f, 1):
            w = line.split()
            if not w or w[0].startswith("#"):
                continue
            kind = w[0]
            try:
                if kind == "dir":
                    entry(w[1], stat.S_IFDIR | int(w[2], 8), int(w[3]), int(w[4]), nlink=2)
                elif kind == "file":
                    with open(w[2], "rb") as g:
                        data = g.read()
                    entry(w[1], stat.S_IFREG | int(w[3], 8), int(w[4]), int(w[5]), data)
                elif kind == "slink":
                    entry(w[1], stat.S_IFLNK | int(w[3], 8), int(w[4]), int(w[5]), w[2].encode())
                elif kind == "nod":
                    t = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}[w[5]]
                    entry(w[1], t | int(w[2], 8), int(w[3]), int(w[4]),
                          rdev=(int(w[6]), int(w[7])))
                else:
                    raise ValueError("unknown entry type " + kind)
            except (IndexError, ValueError, KeyError, OSError) as e:
                sys.exit("%s:%d: %s" % (src, lineno, e))
    entry("TRAILER!!!", 0, 0, 0)
    blob = b"".join(out)
    blob += b"\0" * (-len(blob) % 512)
    tmp = "%s.tmp.%d" % (dst, os.getpid())
    with open(tmp, "wb") as g:
        g.write(blob)
    os.replace(tmp, dst)


if __name__ == "__main__":
    main()
