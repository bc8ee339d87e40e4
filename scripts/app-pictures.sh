#!/bin/sh
# The README's application pictures from a Fashion-MNIST run (default runs/fmnist):
# inpainting (projection and RePaint), zero-shot ×2 upscaling (ILVR), and image-to-image
# toward another class (SDEdit with guidance). Inputs are Fashion-MNIST test images.
set -eu
RUN=${1:-runs/fmnist}
OUT=${2:-docs}
SR=${3:-runs/fmnist-sr}   # an SR3 ×2 model (langevin train --superres 2), if present
L=${LANGEVIN:-./target/release/langevin}
T=$(mktemp -d)
P="python3 scripts/pngtool.py"
S="--sampler dpmpp-2m --steps 25"
mkdir -p "$OUT"
# Inpainting: a pullover (test #1) and a trouser (#2) with their middle masked.
$P mask 32 32 8 10 24 22 "$T/mask.png"
for i in 1 2; do
    $P fmnist $i "$T/in$i.png"
    $L inpaint --model "$RUN" --image "$T/in$i.png" --mask "$T/mask.png" $S --out "$T/proj$i.png" --seed 1
    $L inpaint --model "$RUN" --image "$T/in$i.png" --mask "$T/mask.png" $S --resample 5 --jump 5 \
        --out "$T/repaint$i.png" --seed 1
done
$P row "$OUT/fmnist-inpaint.png" 3 "$T/in1.png" "$T/mask.png" "$T/proj1.png" "$T/repaint1.png" \
    "$T/in2.png" "$T/mask.png" "$T/proj2.png" "$T/repaint2.png"
# ×2: a dress (#13) and a shirt (#4) box-downsampled to 16×16, then upscaled zero-shot (ILVR)
# and, with an SR3 model, by it; last the original.
ROW=""
for i in 13 4; do
    $P fmnist $i "$T/hi$i.png"
    $P down 2 "$T/hi$i.png" "$T/lo$i.png"
    $L upscale --model "$RUN" --image "$T/lo$i.png" --zero-shot $S --out "$T/up$i.png" --seed 1
    ROW="$ROW $T/lo$i.png $T/up$i.png"
    if [ -d "$SR" ]; then
        # Stochastic sampling: this short-trained model leaves speckles under the ODE samplers.
        $L upscale --model "$SR" --image "$T/lo$i.png" --sampler euler-a --steps 50 \
            --out "$T/sr$i.png" --seed 1
        ROW="$ROW $T/sr$i.png"
    fi
    ROW="$ROW $T/hi$i.png"
done
$P row "$OUT/fmnist-upscale.png" 3 $ROW
# Image-to-image: a sneaker (#9) toward "Bag" (class 8) and an ankle boot (#0) toward
# "Sandal" (5), at two strengths, guidance 3.
$P fmnist 9 "$T/sneaker.png"
$P fmnist 0 "$T/boot.png"
for s in 0.5 0.7; do
    $L img2img --model "$RUN" --image "$T/sneaker.png" --strength $s --class 8 --guidance 3 $S \
        --out "$T/bag$s.png" --seed 1
    $L img2img --model "$RUN" --image "$T/boot.png" --strength $s --class 5 --guidance 3 $S \
        --out "$T/sandal$s.png" --seed 1
done
$P row "$OUT/fmnist-img2img.png" 3 "$T/sneaker.png" "$T/bag0.5.png" "$T/bag0.7.png" \
    "$T/boot.png" "$T/sandal0.5.png" "$T/sandal0.7.png"
rm -rf "$T"
echo "wrote $OUT/fmnist-inpaint.png $OUT/fmnist-upscale.png $OUT/fmnist-img2img.png"
