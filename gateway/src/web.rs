//! The browser viewer's built assets (`viewer/web/dist`, built from `viewer/web/src` by
//! `scripts/build-web`), compiled into the gateway and served on its HTTP port.

/// The page (`GET /`).
pub const INDEX_HTML: &[u8] = include_bytes!("../../viewer/web/dist/index.html");

/// The bundled script (`GET /viewer.js`).
pub const VIEWER_JS: &[u8] = include_bytes!("../../viewer/web/dist/viewer.js");
