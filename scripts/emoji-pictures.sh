#!/bin/sh
# The README's emoji application pictures from an emoji run (default runs/emoji; 32×32 RGB,
# class-conditional: langevin train --data emoji --class-cond ...): inpainting (projection and
# RePaint), zero-shot ×2 upscaling (ILVR) and image-to-image toward another category (SDEdit
# with guidance). Inputs are emoji of the npm package, box-downsampled to 32×32.
set -eu
RUN=${1:-runs/emoji}
OUT=${2:-docs}
L=${LANGEVIN:-./target/release/langevin}
T=$(mktemp -d)
P="python3 scripts/pngtool.py"
# Euler-ancestral: with this short-trained model the ODE samplers leave speckles.
S=${S:-"--sampler euler-a --steps 50"}
mkdir -p "$OUT"
# Inpainting: a grinning face (1f600) and a dog face (1f436) with their middle masked.
$P mask 32 32 8 10 24 22 "$T/mask.png"
for e in 1f600 1f436; do
    $P emoji $e.png "$T/in$e.png"
    $L inpaint --model "$RUN" --image "$T/in$e.png" --mask "$T/mask.png" $S --out "$T/proj$e.png" --seed 1
    $L inpaint --model "$RUN" --image "$T/in$e.png" --mask "$T/mask.png" $S --resample 5 --jump 5 \
        --out "$T/repaint$e.png" --seed 1
done
$P row "$OUT/emoji-inpaint.png" 3 "$T/in1f600.png" "$T/mask.png" "$T/proj1f600.png" "$T/repaint1f600.png" \
    "$T/in1f436.png" "$T/mask.png" "$T/proj1f436.png" "$T/repaint1f436.png"
# ×2 zero-shot: a red apple (1f34e) and a car (1f697) downsampled to 16×16, upscaled, original.
ROW=""
for e in 1f34e 1f697; do
    $P emoji $e.png "$T/hi$e.png"
    $P down 2 "$T/hi$e.png" "$T/lo$e.png"
    $L upscale --model "$RUN" --image "$T/lo$e.png" --zero-shot $S --out "$T/up$e.png" --seed 1
    ROW="$ROW $T/lo$e.png $T/up$e.png $T/hi$e.png"
done
$P row "$OUT/emoji-upscale.png" 3 $ROW
# Image-to-image: the grinning face toward "Animals & Nature" (class 1) and the apple toward
# "Smileys & Emotion" (7), at two strengths, guidance 3.
for s in 0.5 0.7; do
    $L img2img --model "$RUN" --image "$T/in1f600.png" --strength $s --class 1 --guidance 3 $S \
        --out "$T/animal$s.png" --seed 1
    $L img2img --model "$RUN" --image "$T/hi1f34e.png" --strength $s --class 7 --guidance 3 $S \
        --out "$T/smiley$s.png" --seed 1
done
$P row "$OUT/emoji-img2img.png" 3 "$T/in1f600.png" "$T/animal0.5.png" "$T/animal0.7.png" \
    "$T/hi1f34e.png" "$T/smiley0.5.png" "$T/smiley0.7.png"
rm -rf "$T"
echo "wrote $OUT/emoji-inpaint.png $OUT/emoji-upscale.png $OUT/emoji-img2img.png"
