#!/bin/sh
# Fetch the optional image data sets the `data::images` loaders and tests read.
# Run once at setup (not by tests; they skip loudly when the data is absent):
#     sh scripts/fetch_image_data.sh
# - Fashion-MNIST: Debian package, lands in /usr/share/datasets/fashion-mnist (needs root).
# - Emoji (Google Noto, 64x64 RGBA): npm tarball unpacked into ~/.cache/langevin/emoji-google.
# The sklearn digits need nothing: they are compiled in through the `smartcore` crate.
set -eu
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    apt-get update && apt-get install -y dataset-fashion-mnist
fi
EMOJI="${HOME}/.cache/langevin/emoji-google"
if [ ! -f "$EMOJI/package/emoji.json" ]; then
    mkdir -p "$EMOJI"
    cd "$EMOJI"
    npm pack emoji-datasource-google@16.0.0
    tar xzf emoji-datasource-google-16.0.0.tgz
    rm emoji-datasource-google-16.0.0.tgz
fi
