//! The OpenXR backend against a real runtime: Monado with its null compositor and simulated
//! headset, built by `scripts/build-monado` (run by `scripts/test`, which passes the runtime's
//! manifest in `THETA_MONADO_JSON`).
#![cfg(feature = "vr-openxr")]

use theta_viewer::xr::start;

/// Points the loader at Monado (null compositor, no window, no GPU needed).
fn monado() {
    let manifest = std::env::var("THETA_MONADO_JSON").expect(
        "THETA_MONADO_JSON must name Monado's runtime manifest: run `scripts/build-monado` (scripts/test does) and set it to the path it prints",
    );
    assert!(std::path::Path::new(&manifest).exists(), "{manifest} does not exist");
    // Setting the environment is process-wide; this test binary runs nothing else that reads it.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("XR_RUNTIME_JSON", &manifest);
        std::env::set_var("XRT_COMPOSITOR_NULL", "1");
    }
}

#[test]
fn the_runtime_offers_vulkan_and_a_stereo_headset() {
    monado();
    let system = start().unwrap_or_else(|e| panic!("OpenXR against Monado: {e}"));
    assert_eq!(system.views.len(), 2, "two eyes");
    for v in &system.views {
        assert!(v.recommended_image_rect_width > 0 && v.recommended_image_rect_height > 0, "{v:?}");
    }
}
