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
    draw_text(&mut img, width, height, PAD, PAD, &lines, scale);
    img
}

/// Font pixels per label pixel.
pub const LABEL_SCALE: usize = 2;
/// Pixel height of one label line (a 10-pixel font line at [`LABEL_SCALE`]).
pub const LABEL_LINE: usize = 10 * LABEL_SCALE;
/// Width of a label's accent stripe, pixels.
const STRIPE: usize = 6;

/// Rasterises a label: `text` (one line per `\n`, each cut at `columns` characters) in white on
/// a dark panel with an accent stripe of `accent` (sRGB bytes) down its left edge. Returns the
/// image's width, height and RGBA bytes, sized to the text.
pub fn badge(text: &str, columns: usize, accent: [u8; 4]) -> (usize, usize, Vec<u8>) {
    let lines: Vec<String> = text.lines().map(|l| l.chars().take(columns).collect()).collect();
    let cols = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0).max(1);
    let (w, h) = (STRIPE + cols * 8 * LABEL_SCALE + 2 * PAD, lines.len().max(1) * LABEL_LINE + 2 * PAD);
    let mut img = vec![0u8; w * h * 4];
    for y in 0..h {
        for x in 0..w {
            let px: [u8; 4] = if x < STRIPE { accent } else { [16, 18, 24, 230] };
            img[(y * w + x) * 4..][..4].copy_from_slice(&px);
        }
    }
    draw_text(&mut img, w, h, STRIPE + PAD, PAD, &lines, LABEL_SCALE);
    (w, h, img)
}

/// Draws `lines` in white from (`x0`, `y0`) at `scale` pixels per font pixel, clipped to the
/// `width`×`height` RGBA image.
fn draw_text<S: AsRef<str>>(
    img: &mut [u8],
    width: usize,
    height: usize,
    x0: usize,
    y0: usize,
    lines: &[S],
    scale: usize,
) {
    for (row, line) in lines.iter().enumerate() {
        for (col, ch) in line.as_ref().chars().enumerate() {
            let glyph = glyph(ch);
            for (gy, bits) in glyph.iter().enumerate() {
                for gx in (0..8).filter(|gx| bits >> gx & 1 == 1) {
                    for sy in 0..scale {
                        for sx in 0..scale {
                            let x = x0 + (col * 8 + gx) * scale + sx;
                            let y = y0 + (row * 10 + gy) * scale + sy;
                            if x < width && y < height {
                                img[(y * width + x) * 4..][..4].copy_from_slice(&[240, 240, 240, 255]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The 8×8 bitmap of `ch`: ASCII and Latin-1 (the status lines' `·` and `×`, accented names),
/// box-drawing lines, dashes and arrows by their closest ASCII shape; anything else as `?`,
/// so a missing glyph shows rather than leaving a silent gap.
fn glyph(ch: char) -> [u8; 8] {
    use font8x8::legacy::{BASIC_LEGACY, BOX_LEGACY, LATIN_LEGACY};
    let code = ch as usize;
    match ch {
        '\0'..='\u{7f}' => BASIC_LEGACY[code],
        '\u{a0}'..='\u{ff}' => LATIN_LEGACY[code - 0xa0],
        '\u{2500}'..='\u{257f}' => BOX_LEGACY[code - 0x2500],
        '‐' | '‑' | '‒' | '–' | '—' | '−' => BASIC_LEGACY['-' as usize],
        '‘' | '’' => BASIC_LEGACY['\'' as usize],
        '“' | '”' => BASIC_LEGACY['"' as usize],
        '→' => BASIC_LEGACY['>' as usize],
        '←' => BASIC_LEGACY['<' as usize],
        '…' => BASIC_LEGACY['.' as usize],
        _ => BASIC_LEGACY['?' as usize],
    }
}

#[cfg(test)]
mod tests {
    use super::glyph;

    #[test]
    fn status_line_characters_have_glyphs_and_unknown_ones_show_as_a_question_mark() {
        for ch in ['·', '×', 'é', 'A', '─', '—'] {
            assert_ne!(glyph(ch), [0; 8], "{ch:?} has no glyph");
        }
        assert_eq!(glyph(' '), [0; 8]);
        assert_eq!(glyph('✓'), glyph('?'));
        assert_eq!(glyph('—'), glyph('-'));
    }
}
