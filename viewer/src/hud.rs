//! The overlay (HUD): lines of text rasterised with an 8×8 bitmap font into an RGBA image,
//! which the renderer composites over the scene.

/// Pixels per font pixel on wide images (1 below 1,200 pixels).
pub const SCALE_WIDE: usize = 2;
/// Margin around the text, pixels.
const PAD: usize = 6;

/// Rasterises `text` (one line per `\n`) at the top-left of a `width`×`height` RGBA image:
/// white text on a translucent dark panel, everything else transparent.
pub fn rasterize(text: &str, width: usize, height: usize) -> Vec<u8> {
    let mut img = vec![0u8; width * height * 4];
    let scale = if width >= 1_200 { SCALE_WIDE } else { 1 };
    let lines: Vec<&str> = text.lines().collect();
    let cols = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    if cols == 0 {
        return img;
    }
    let (panel_w, panel_h) =
        ((cols * 8 * scale + 2 * PAD).min(width), (lines.len() * 10 * scale + 2 * PAD).min(height));
    for y in 0..panel_h {
        for x in 0..panel_w {
            img[(y * width + x) * 4..][..4].copy_from_slice(&[10, 12, 16, 170]);
        }
    }
    for (row, line) in lines.iter().enumerate() {
        for (col, ch) in line.chars().enumerate() {
            let glyph = font8x8::legacy::BASIC_LEGACY.get(ch as usize).copied().unwrap_or([0; 8]);
            for (gy, bits) in glyph.iter().enumerate() {
                for gx in 0..8 {
                    if bits >> gx & 1 == 0 {
                        continue;
                    }
                    for sy in 0..scale {
                        for sx in 0..scale {
                            let x = PAD + (col * 8 + gx) * scale + sx;
                            let y = PAD + (row * 10 + gy) * scale + sy;
                            if x < width && y < height {
                                img[(y * width + x) * 4..][..4].copy_from_slice(&[240, 240, 240, 255]);
                            }
                        }
                    }
                }
            }
        }
    }
    img
}
