#!/usr/bin/env python3
"""The GPU targets in the fatbinaries of an object file or static library, as cuobjdump lists them.

Usage: fatbin_targets.py FILE [FILE ...]
Prints one line per object that carries device code: `OBJECT elf=sm_80,sm_90 ptx=compute_90`.
Reads the ELF host objects (an `ar` archive member by member), their .nv_fatbin section and the
fatbinary's entry headers (kind 1 = PTX, 2 = ELF/SASS; the SM number at byte 28 of each header).
cuobjdump (--list-elf / --list-ptx) tells the same where the CUDA toolkit ships it; the toolkit
here does not, and Debian main has no package for it, hence this reader.
Needs only the Python standard library; a file that is not an ELF object or archive is an error.
"""
import struct
import sys

FATBIN_MAGIC = 0xBA55ED50
KIND_PTX, KIND_ELF = 1, 2


def fail(message):
    sys.exit(f"fatbin_targets.py: {message}")


def archive_members(data, path):
    """(name, bytes) of each member of an `ar` archive (GNU long names resolved)."""
    position, long_names = 8, b""
    while position + 60 <= len(data):
        header = data[position:position + 60]
        name, size = header[:16].decode().strip(), int(header[48:58].decode().strip() or 0)
        body = data[position + 60:position + 60 + size]
        if name == "//":
            long_names = body
        elif name.startswith("/") and name[1:].isdigit():
            start = int(name[1:])
            yield long_names[start:long_names.index(b"/\n", start)].decode(), body
        elif name not in ("/", "/SYM64/"):
            yield name.rstrip("/"), body
        position += 60 + size + (size & 1)
    if position != len(data):
        fail(f"{path}: truncated ar archive (expected {position} bytes, found {len(data)})")


def fatbin_section(elf, name):
    """The bytes of the .nv_fatbin section of a 64-bit little-endian ELF object, or b""."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        fail(f"{name}: not a 64-bit little-endian ELF object")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    strtab_offset = sections[shstrndx][4]
    for name_offset, _type, _flags, _addr, offset, size in sections:
        end = elf.index(b"\0", strtab_offset + name_offset)
        if elf[strtab_offset + name_offset:end] == b".nv_fatbin":
            return elf[offset:offset + size]
    return b""


def targets(fatbin, name):
    """Sorted ELF (SASS) and PTX architectures of every fatbinary in a .nv_fatbin section."""
    elf, ptx = set(), set()
    position = 0
    while position + 16 <= len(fatbin):
        magic, _version, header_size, fat_size = struct.unpack_from("<IHHQ", fatbin, position)
        if magic == 0:  # alignment padding between fatbinaries
            position += 8
            continue
        if magic != FATBIN_MAGIC:
            fail(f"{name}: fatbinary magic {magic:#x} at byte {position} (expected {FATBIN_MAGIC:#x})")
        entry, end = position + header_size, position + header_size + fat_size
        while entry < end:
            kind, _entry_version, entry_header, payload = struct.unpack_from("<HHIQ", fatbin, entry)
            arch, = struct.unpack_from("<I", fatbin, entry + 28)
            if kind == KIND_ELF:
                elf.add(arch)
            elif kind == KIND_PTX:
                ptx.add(arch)
            else:
                fail(f"{name}: fatbinary entry of kind {kind} at byte {entry} (expected 1 PTX or 2 ELF)")
            entry += entry_header + payload
        position = end
    return sorted(elf), sorted(ptx)


def main():
    if len(sys.argv) < 2:
        fail("usage: fatbin_targets.py FILE [FILE ...] (object files or static libraries)")
    for path in sys.argv[1:]:
        try:
            data = open(path, "rb").read()
        except OSError as error:
            fail(f"{path}: cannot read ({error.strerror})")
        members = archive_members(data, path) if data[:8] == b"!<arch>\n" else [(path, data)]
        for member, body in members:
            elf, ptx = targets(fatbin_section(body, f"{path}:{member}"), f"{path}:{member}")
            if elf or ptx:
                print(f"{path}:{member} elf={','.join(f'sm_{a}' for a in elf)} "
                      f"ptx={','.join(f'compute_{a}' for a in ptx)}")


if __name__ == "__main__":
    main()
