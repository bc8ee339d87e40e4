#!/usr/bin/env python3
"""Tiny pure-Python PNG helpers for the README pictures (no numpy/PIL needed).

  pngtool.py fmnist INDEX OUT.png [--size N]   test image INDEX of Fashion-MNIST, padded to N (32)
  pngtool.py emoji FILE OUT.png                an emoji of the npm package (64×64 RGBA), on white,
                                               box-downsampled to 32×32 (the emoji model's size)
  pngtool.py mask W H X0 Y0 X1 Y1 OUT.png      black W×H with a white box [X0,X1)×[Y0,Y1)
  pngtool.py down F IN.png OUT.png             box-downsample a PNG by F
  pngtool.py row OUT.png SCALE IN1.png ...     tile PNGs in a row (2 px gaps), upscaled ×SCALE
Grey, RGB and RGBA (composited on white) 8-bit PNGs are read; pixels are tuples of 1 or 3 values.
"""
import os
import gzip
import struct
import sys
import zlib

FM = "/usr/share/datasets/fashion-mnist"


def write_png(path, w, h, rows):
    """rows of pixels (ints, or tuples of 1 or 3 values): grey when every pixel has one."""
    px = [[p if isinstance(p, tuple) else (p,) for p in r] for r in rows]
    rgb = any(len(p) == 3 for r in px for p in r)
    flat = [[v for p in r for v in (p * 3 if rgb and len(p) == 1 else p)] for r in px]
    raw = b"".join(b"\x00" + bytes(r) for r in flat)

    def chunk(t, d):
        c = struct.pack(">I", len(d)) + t + d
        return c + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2 if rgb else 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    open(path, "wb").write(png)


def read_png(path):
    """Grey, RGB or RGBA 8-bit PNG without interlace → (w, h, rows of pixel tuples); alpha
    is composited on white."""
    data = open(path, "rb").read()
    pos, idat, w, h, bpp = 8, b"", 0, 0, 1
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        t, d = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        if t == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", d[:10])
            assert depth == 8 and ctype in (0, 2, 6), "grey/RGB/RGBA 8-bit only"
            bpp = {0: 1, 2: 3, 6: 4}[ctype]
        elif t == b"IDAT":
            idat += d
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride, rows, prev = w * bpp, [], bytearray(w * bpp)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        prev = line
        if bpp == 4:
            rows.append([tuple(round(line[x * 4 + k] * line[x * 4 + 3] / 255 + 255 - line[x * 4 + 3]) for k in range(3)) for x in range(w)])
        else:
            rows.append([tuple(line[x * bpp : x * bpp + bpp]) for x in range(w)])
    return w, h, rows


def box_down(rows, w, h, f):
    n = len(rows[0][0])
    return [
        [tuple(round(sum(rows[y * f + i][x * f + j][k] for i in range(f) for j in range(f)) / f / f) for k in range(n)) for x in range(w // f)]
        for y in range(h // f)
    ]


def main():
    cmd, a = sys.argv[1], sys.argv[2:]
    if cmd == "fmnist":
        idx, out = int(a[0]), a[1]
        size = int(a[3]) if len(a) > 3 else 32
        raw = gzip.open(f"{FM}/t10k-images-idx3-ubyte.gz").read()
        img = raw[16 + idx * 784 : 16 + (idx + 1) * 784]
        p = (size - 28) // 2
        rows = [[0] * size for _ in range(size)]
        for y in range(28):
            for x in range(28):
                rows[y + p][x + p] = img[y * 28 + x]
        write_png(out, size, size, rows)
    elif cmd == "mask":
        w, h, x0, y0, x1, y1 = map(int, a[:6])
        rows = [[255 if x0 <= x < x1 and y0 <= y < y1 else 0 for x in range(w)] for y in range(h)]
        write_png(a[6], w, h, rows)
    elif cmd == "emoji":
        home = os.environ.get("HOME", ".")
        path = f"{home}/.cache/langevin/emoji-google/package/img/google/64/{a[0]}"
        w, h, rows = read_png(path)
        write_png(a[1], w // 2, h // 2, box_down(rows, w, h, 2))
    elif cmd == "down":
        f, (w, h, rows) = int(a[0]), read_png(a[1])
        write_png(a[2], w // f, h // f, box_down(rows, w, h, f))
    elif cmd == "row":
        out, scale, imgs = a[0], int(a[1]), [read_png(p) for p in a[2:]]
        # Each image is first brought to the tallest height (nearest), then scaled.
        H = max(h for _, h, _ in imgs)
        tiles = []
        for w, h, rows in imgs:
            f = H // h
            tiles.append([[rows[y // f][x // f] for x in range(w * f)] for y in range(H)])
        gap = 2
        W = sum(len(t[0]) for t in tiles) + gap * (len(tiles) + 1)
        canvas = [[(255,)] * W for _ in range(H + 2 * gap)]
        x0 = gap
        for t in tiles:
            for y, r in enumerate(t):
                canvas[y + gap][x0 : x0 + len(r)] = r
            x0 += len(t[0]) + gap
        big = [[v for v in r for _ in range(scale)] for r in canvas for _ in range(scale)]
        write_png(out, W * scale, (H + 2 * gap) * scale, big)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
